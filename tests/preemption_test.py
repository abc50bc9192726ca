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
             'train.backup_every_steps = 2',
             'image_datasets.max_train_examples = 512',
             'image_datasets.max_test_examples = 64']


def _command(workdir):
  return ([sys.executable, os.path.join(ROOT, 'train.py'),
           '--gin_file=gin/quickstart.gin', f'--workdir={workdir}'] +
          [f'--gin_bindings={b}' for b in _BINDINGS])


def _backup_step(workdir):
  """Batches done per the backup metadata, or None before the first one."""
  path = os.path.join(workdir, 'backup', 'training_metadata.json')
  try:
    meta = json.load(open(path))
  except (OSError, ValueError):
    return None
  return meta['epoch'] * STEPS_PER_EPOCH + meta['batch']


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  # Wait for a mid-epoch backup (step 2 or 4 of the first epoch).
  while time.time() < deadline and proc.poll() is None:
    step = _backup_step(workdir)
    if step is not None and 0 < step < STEPS_PER_EPOCH:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))

  result = subprocess.run(_command(workdir), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = re.search(r'Resuming from the backup at step (\d+)', result.stderr)
  assert resumed, result.stderr[-3000:]
  assert 0 < int(resumed.group(1)) < EPOCHS * STEPS_PER_EPOCH
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
  metrics = training.train(workdir=workdir)
  assert metrics['steps'] == EPOCHS * STEPS_PER_EPOCH
  assert metrics['epochs_run_this_time'] == 2  # The rest of epoch 1, then 2.

  # Neither can be read: a clear error, and nothing is overwritten.
  _corrupt(backup)
  _corrupt(backup + '.bkp')
  _parse([f'EPOCHS = {EPOCHS + 1}'])
  with pytest.raises(RuntimeError, match='Cannot resume: no backup'):
    training.train(workdir=workdir)
