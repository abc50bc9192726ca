"""Shared test set-up: every test starts and ends with an empty gin config."""

import gin
import pytest


@pytest.fixture(autouse=True)
def _isolated_gin():
  gin.clear_config()
  yield
  gin.clear_config()
