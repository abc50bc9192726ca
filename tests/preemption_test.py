"""Preemption: a run killed with SIGKILL resumes bit-identical to an
uninterrupted one.

Real `train.py` subprocesses on the built-in data under
`train.deterministic = True`, killed by SIGKILL (no clean-up runs) mid-epoch
and in the middle of a backup's write, then the same command again. Also: a
corrupt newest backup falls back to the previous one, and unreadable backups
stop the run with a clear error instead of silently starting over.
"""

import os

import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order
import train_runs  # pylint: disable=g-bad-import-order
import workdir_testing  # pylint: disable=g-bad-import-order

ROOT = gin_testing.ROOT
STEPS_PER_EPOCH = 6
EPOCHS = 2
# Batches of 16 (the quick start's are 64): what is tested is where the runs
# stop and resume, not the batch; the four runs' 27 steps cost less.
BATCH_SIZE = 16
_BINDINGS = [f'EPOCHS = {EPOCHS}',
             f'train.max_steps_per_epoch = {STEPS_PER_EPOCH}',
             'train.max_eval_steps = 1', 'train.verbose = 0',
             'train.shift_consistency_max_shift = 0',
             'train.backup_every_steps = 2',
             f'image_datasets.batch_size = {BATCH_SIZE}',
             'image_datasets.max_train_examples = 512',
             'image_datasets.max_test_examples = 64']


def _run(workdir, log, **kill):
  """train.py with `_BINDINGS` under `train.deterministic = True` in
  `workdir` (`train_runs.run_train`)."""
  return train_runs.run_train(
      workdir, 'gin/quickstart.gin',
      _BINDINGS + ['train.deterministic = True'], log, **kill)


@pytest.mark.slow
def test_sigkill_mid_epoch_and_mid_backup_leaves_the_run_bit_identical(
    tmp_path):
  log = str(tmp_path / 'runs.log')
  reference, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  assert train_runs.resumed_at(_run(reference, log)) is None
  # Killed after step 5 of 6 in epoch 1: the last backup is step 4's.
  _run(killed, log, kill_at_step=5)
  # Resumes at step 4; killed while writing its second backup (step 8),
  # after its first (step 6) was complete.
  _run(killed, log, kill_in_save=2)
  weights = os.path.join(killed, 'backup', 'latest.weights.h5')
  stdout = _run(killed, log)
  assert train_runs.resumed_at(stdout) == 6, stdout  # From the previous backup.
  assert os.path.exists(weights + '.corrupt')
  with open(log) as f:
    assert 'Resuming from the backup at step 4' in f.read()

  got, want = (train_runs.metrics_of(killed),
               train_runs.metrics_of(reference))
  assert got['steps'] == EPOCHS * STEPS_PER_EPOCH
  assert got['batch_size'] == BATCH_SIZE
  assert train_runs.comparable(got) == train_runs.comparable(want)
  train_runs.assert_same_final_weights(killed, reference)


def _parse(bindings=()):
  gin_testing.parse('quickstart.gin', _BINDINGS + list(bindings))



def _corrupt(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


def test_unreadable_backups_stop_the_run_and_change_nothing(tmp_path):
  # (A damaged newest backup alone falls back to the previous one: the
  # SIGKILL test above.)
  workdir = str(tmp_path)
  # Eager steps: only the backups are needed here (no tracing to pay for).
  _parse(['EPOCHS = 1', 'train.run_eagerly = True'])
  training.train(workdir=workdir)
  backup = os.path.join(workdir, 'backup', 'latest.weights.h5')
  assert os.path.exists(backup + '.bkp')  # Double checkpoint kept.
  _corrupt(backup)
  _corrupt(backup + '.bkp')
  before = workdir_testing.files_of(workdir)
  _parse([f'EPOCHS = {EPOCHS}'])
  with pytest.raises(RuntimeError, match='Cannot resume: no backup'):
    training.train(workdir=workdir, allow_config_change=True)
  assert workdir_testing.files_of(workdir) == before
