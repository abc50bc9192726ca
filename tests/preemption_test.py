"""Preemption: a run killed with SIGKILL mid-epoch resumes from its backup.

A real `train.py` subprocess on the built-in data, killed by the operating
system's SIGKILL (no clean-up runs), then the same command again. Also: a
corrupt newest backup falls back to the previous one, and unreadable backups
stop the run with a clear error instead of silently starting over.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

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


def _backup_position(workdir):
  """(epoch, index of the last batch) per the backup metadata, or None
  before the first backup."""
  path = os.path.join(workdir, 'backup', 'training_metadata.json')
  try:
    meta = json.load(open(path))
  except (OSError, ValueError):
    return None
  return meta['epoch'], meta['batch']


# The backup (every 2 steps) after which the first run stops to be killed.
PAUSE_STEP = 2

# train.py as the command line runs it, with one more callback (after the
# backup callback, which `train` puts first): once the backup of step
# PAUSE_STEP of the first epoch is written, it writes a marker file and waits
# there to be killed. The kill then always falls mid-epoch, at that step.
_PAUSING_RUN = """
import os
import runpy
import sys
import time

import gin
import keras

ROOT, MARKER, PAUSE_STEP, ARGS = {root!r}, {marker!r}, {pause_step!r}, {args!r}


class PauseForTheKill(keras.callbacks.Callback):

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self.epoch == 0 and batch + 1 == PAUSE_STEP:
      with open(MARKER + '.tmp', 'w') as f:
        f.write(str(batch + 1))
      os.replace(MARKER + '.tmp', MARKER)
      time.sleep(600)  # Killed long before.


gin.external_configurable(PauseForTheKill, module='preemption_test')
sys.argv = ARGS + [
    '--gin_bindings=train.extra_callbacks = [@PauseForTheKill()]']
runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  marker = str(tmp_path / 'paused')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  script = _PAUSING_RUN.format(root=ROOT, marker=marker,
                               pause_step=PAUSE_STEP,
                               args=_command(workdir)[1:])
  with open(tmp_path / 'first_run.log', 'w+') as log:
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 600
    while (time.time() < deadline and proc.poll() is None
           and not os.path.exists(marker)):
      time.sleep(0.05)
    log.seek(0)
    assert os.path.exists(marker) and proc.poll() is None, (
        'the run ended (or timed out) before it paused: ' + log.read()[-3000:])
  # The run is paused right after the backup of step PAUSE_STEP of epoch 1.
  assert _backup_position(workdir) == (0, PAUSE_STEP - 1)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))

  result = subprocess.run(_command(workdir), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = re.search(r'Resuming from the backup at step (\d+)', result.stdout)
  assert resumed, result.stdout[-3000:] + result.stderr[-3000:]
  assert int(resumed.group(1)) == PAUSE_STEP
  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  # Exactly the steps asked for: none done twice, none skipped.
  assert metrics['steps'] == EPOCHS * STEPS_PER_EPOCH
  assert metrics['epochs_run_this_time'] == EPOCHS


def _parse(bindings=()):
  gin_testing.parse('quickstart.gin', _BINDINGS + list(bindings))



def _corrupt(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


def test_corrupt_backups_fall_back_or_fail_clearly(tmp_path):
  workdir = str(tmp_path)
  _parse(['EPOCHS = 1'])
  training.train(workdir=workdir)
  backup = os.path.join(workdir, 'backup', 'latest.weights.h5')
  assert os.path.exists(backup + '.bkp')  # Double checkpoint kept.

  # The newest file is damaged (a kill while it was written): the previous
  # backup (step 4 of the 6 done) is used and the run ends at the right step.
  _corrupt(backup)
  _parse()
  metrics = training.train(workdir=workdir, allow_config_change=True)
  assert metrics['steps'] == EPOCHS * STEPS_PER_EPOCH
  assert metrics['epochs_run_this_time'] == 2  # The rest of epoch 1, then 2.

  # Neither can be read: a clear error, and nothing is overwritten.
  _corrupt(backup)
  _corrupt(backup + '.bkp')
  _parse([f'EPOCHS = {EPOCHS + 1}'])
  with pytest.raises(RuntimeError, match='Cannot resume: no backup'):
    training.train(workdir=workdir, allow_config_change=True)
