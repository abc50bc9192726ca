"""Shared test set-up: XLA's cheapest optimisation level and one TensorFlow
thread per pool for the session and its subprocesses
(`subprocess_testing.session_env`, set before TensorFlow or JAX
starts), every test starts and ends with an empty gin config, and the
tests marked `slow` run first."""

import os

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

os.environ.update(subprocess_testing.session_env(dict(os.environ)))

import gin  # pylint: disable=g-import-not-at-top,g-bad-import-order
import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


@pytest.fixture(autouse=True)
def _isolated_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def pytest_collection_modifyitems(items):
  """The `slow` tests first (otherwise in collection order): under xdist
  they then start at once, spread over the workers, instead of one long
  test starting near the end and running alone while the other workers
  wait."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
