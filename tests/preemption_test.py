"""Preemption: a run killed with SIGKILL resumes bit-identical to an
uninterrupted one.

Real `train.py` subprocesses on the built-in data under
`train.deterministic = True`, killed by SIGKILL (no clean-up runs) mid-epoch
and in the middle of a backup's write, then the same command again. Also: a
corrupt newest backup falls back to the previous one, and unreadable backups
stop the run with a clear error instead of silently starting over.
"""

import json
import os
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order
import workdir_testing  # pylint: disable=g-bad-import-order

ROOT = gin_testing.ROOT
STEPS_PER_EPOCH = 6
EPOCHS = 2
_BINDINGS = [f'EPOCHS = {EPOCHS}',
             f'train.max_steps_per_epoch = {STEPS_PER_EPOCH}',
             'train.max_eval_steps = 1', 'train.verbose = 0',
             'train.shift_consistency_max_shift = 0',
             'train.backup_every_steps = 2',
             'image_datasets.max_train_examples = 512',
             'image_datasets.max_test_examples = 64']


def _command(workdir):
  return ([sys.executable, os.path.join(ROOT, 'train.py'),
           '--gin_file=gin/quickstart.gin', f'--workdir={workdir}'] +
          [f'--gin_bindings={b}' for b in _BINDINGS])


# train.py as the command line runs it, killed by SIGKILL from inside at a
# chosen point (no clean-up runs): after optimizer step KILL_AT_STEP, or
# in the middle of the process's KILL_IN_SAVE-th backup, its weights file
# left a third written.
_KILLED_RUN = """
import os
import runpy
import signal
import sys

import gin
import keras

ROOT, ARGS, KILL_AT_STEP, KILL_IN_SAVE = {root!r}, {args!r}, {step!r}, {save!r}


def die():
  os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(keras.callbacks.Callback):

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) == KILL_AT_STEP:
      die()


saves = []
save_weights = keras.Model.save_weights


def save_and_die_midway(self, filepath, *args, **kwargs):
  save_weights(self, filepath, *args, **kwargs)
  saves.append(filepath)
  path = str(filepath)
  if len(saves) == KILL_IN_SAVE:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)
    die()


keras.Model.save_weights = save_and_die_midway
gin.external_configurable(KillAtStep, module='preemption_test')
sys.argv = ARGS + [
    '--gin_bindings=train.extra_callbacks = [@KillAtStep()]']
runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
"""


def _run(workdir, log, kill_at_step=None, kill_in_save=None):
  """Runs train.py in `workdir`; returns its stdout (asserting exit 0), or
  None when it was to be killed (asserting it was)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  command = _command(workdir) + ['--gin_bindings=train.deterministic = True']
  if kill_at_step or kill_in_save:
    command = [sys.executable, '-c', _KILLED_RUN.format(
        root=ROOT, args=command[1:], step=kill_at_step, save=kill_in_save)]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  with open(log, 'a') as f:
    f.write(result.stdout + result.stderr)
  if kill_at_step or kill_in_save:
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not os.path.exists(os.path.join(workdir, 'metrics.json'))
    return None
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _resumed_at(stdout):
  found = re.search(r'Resuming from the backup at step (\d+)', stdout)
  return int(found.group(1)) if found else None


def _final_weights(workdir):
  model = keras.saving.load_model(
      os.path.join(workdir, 'checkpoints', 'last.keras'), compile=False)
  return [(w.path, np.asarray(w)) for w in model.weights]


@pytest.mark.slow
def test_sigkill_mid_epoch_and_mid_backup_leaves_the_run_bit_identical(
    tmp_path):
  log = str(tmp_path / 'runs.log')
  reference, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  assert _resumed_at(_run(reference, log)) is None
  # Killed after step 5 of 6 in epoch 1: the last backup is step 4's.
  _run(killed, log, kill_at_step=5)
  # Resumes at step 4; killed while writing its second backup (step 8),
  # after its first (step 6) was complete.
  _run(killed, log, kill_in_save=2)
  weights = os.path.join(killed, 'backup', 'latest.weights.h5')
  stdout = _run(killed, log)
  assert _resumed_at(stdout) == 6, stdout  # From the previous backup.
  assert os.path.exists(weights + '.corrupt')
  with open(log) as f:
    assert 'Resuming from the backup at step 4' in f.read()

  got = json.load(open(os.path.join(killed, 'metrics.json')))
  want = json.load(open(os.path.join(reference, 'metrics.json')))
  assert got['steps'] == EPOCHS * STEPS_PER_EPOCH
  varying = {k for k in want if k.endswith('_this_time') or 'wall_time' in k
             or 'per_second' in k or k.endswith('_seconds')}
  assert {k: v for k, v in got.items() if k not in varying} == {
      k: v for k, v in want.items() if k not in varying}
  # Every weight, the strides included, bit for bit (paired by position:
  # the two models loaded in one process get different layer names).
  got_weights, want_weights = (_final_weights(killed),
                               _final_weights(reference))
  assert len(got_weights) == len(want_weights)
  assert any('stride' in path for path, _ in want_weights)
  for (_, g), (path, w) in zip(got_weights, want_weights):
    assert g.dtype == w.dtype and g.shape == w.shape, path
    assert np.array_equal(g, w, equal_nan=True), path


def _parse(bindings=()):
  gin_testing.parse('quickstart.gin', _BINDINGS + list(bindings))



def _corrupt(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


def test_unreadable_backups_stop_the_run_and_change_nothing(tmp_path):
  # (A damaged newest backup alone falls back to the previous one: the
  # SIGKILL test above.)
  workdir = str(tmp_path)
  _parse(['EPOCHS = 1'])
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
