"""Shared test set-up: XLA's cheapest optimisation level and one TensorFlow
thread per pool for the session and its subprocesses
(`subprocess_testing.session_env`, set before TensorFlow or JAX
starts), every test starts and ends with an empty gin config, and under
xdist (`-n`) the tests marked `slow` start first and idle workers take
pending tests from busy ones (work stealing)."""

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


def pytest_xdist_make_scheduler(config, log):
  """xdist's work-stealing scheduler where its default ('load') was asked
  for: each worker starts on an equal share of the tests and an idle worker
  takes half of a busy one's pending tests, so the suite does not end on
  one worker still going through its queue while the others wait."""
  if config.getvalue('dist') != 'load':
    return None
  from xdist.scheduler import WorkStealingScheduling  # pylint: disable=g-import-not-at-top
  return WorkStealingScheduling(config, log)
