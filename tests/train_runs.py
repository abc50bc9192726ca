"""Runs `train.py` in a fresh process, on a chosen Keras backend, and kills
it with SIGKILL from inside at a chosen point (no clean-up runs).

    run_train(workdir, args, log, backend='jax', kill_at_step=5)

A killed run is `train.py` itself (through `runpy`) with one more callback
that SIGKILLs the process after optimizer step `kill_at_step`; with
`kill_in_save=n` the process's n-th `save_weights` (a backup) is left a third
written and the process is killed there.
"""

import json
import os
import re
import signal
import subprocess
import sys

import keras
import numpy as np

import diffstride  # Registers the classes .keras files name.  # pylint: disable=unused-import

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

ROOT = subprocess_testing.ROOT

# The keys of a run's metrics.json by default (no BatchNorm recalibration),
# on every backend.
METRICS_KEYS = frozenset({
    'dataset', 'num_classes', 'test_top1', 'test_loss', 'learned_strides',
    'axis_names', 'method', 'stride_init', 'complexity_weight',
    'complexity_form', 'complexity', 'num_params', 'epochs',
    'epochs_run_this_time', 'steps', 'steps_per_epoch', 'on_nonfinite',
    'skipped_steps_this_time', 'batch_size', 'wall_time_seconds', 'seed',
    'backend', 'strategy', 'num_replicas', 'test_top5', 'jit_compile',
    'shift_consistency'})
# And those of a compiled run (XLA: TensorFlow with jit_compile, JAX).
COMPILED_KEYS = frozenset({'size_changes_this_time',
                           'recompilations_this_time'})

_KILLED_RUN = """
import os
import runpy
import signal
import sys

if {without_tensorflow!r}:  # As where they are not installed.
  sys.modules['tensorflow'] = None
  sys.modules['tensorflow_datasets'] = None

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
gin.external_configurable(KillAtStep, module='train_runs')
sys.argv = ARGS + [
    '--gin_bindings=train.extra_callbacks = [@KillAtStep()]']
runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
"""


# train.py in a process where TensorFlow and TensorFlow Datasets cannot be
# imported, as where they are not installed (an import raises ImportError).
_WITHOUT_TENSORFLOW = """
import runpy
import sys

sys.modules['tensorflow'] = None
sys.modules['tensorflow_datasets'] = None
sys.argv = {args!r}
if {module!r}:
  runpy.run_module({module!r}, run_name='__main__', alter_sys=True)
else:
  runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_module_without_tensorflow(module, args, log, backend='jax'):
  """`python -m module *args` where TensorFlow cannot be imported; returns
  its stdout (asserting exit 0)."""
  command = [sys.executable, '-c', _WITHOUT_TENSORFLOW.format(
      args=[module] + list(args), module=module)]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False,
                          env=subprocess_testing.backend_env(backend))
  with open(log, 'a') as f:
    f.write(f'$ python -m {module} ...\n{result.stdout}{result.stderr}')
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def train_command(workdir, gin_file, bindings):
  """The command line of `train.py --gin_file=... --workdir=...`."""
  return ([sys.executable, os.path.join(ROOT, 'train.py'),
           f'--gin_file={gin_file}', f'--workdir={workdir}'] +
          [f'--gin_bindings={b}' for b in bindings])


def run_train(workdir, gin_file, bindings, log, backend=None,
              kill_at_step=None, kill_in_save=None, env=None,
              without_tensorflow=False, expect_returncode=0,
              peers_may_end_it=False):
  """Runs train.py in `workdir`; returns its stdout (asserting exit 0), or
  None when it was to be killed (asserting it was, before metrics.json).

  Args:
    backend: a Keras backend (`subprocess_testing.backend_env`), or None for
      the test session's environment (TensorFlow).
    env: more environment variables.
    without_tensorflow: run where `import tensorflow` (and
      tensorflow_datasets) fails, as without them installed.
    expect_returncode: the exit status of a run not killed (then its stdout
      and stderr together are returned).
    peers_may_end_it: a killed process of a multi-process run may also end
      with an error first, when a process it computes with was killed.
  """
  if backend is None:
    run_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  else:
    run_env = subprocess_testing.backend_env(backend)
  run_env.update(env or {})
  command = train_command(workdir, gin_file, bindings)
  killed = bool(kill_at_step or kill_in_save)
  if killed:
    command = [sys.executable, '-c', _KILLED_RUN.format(
        root=ROOT, args=command[1:], step=kill_at_step, save=kill_in_save,
        without_tensorflow=without_tensorflow)]
  elif without_tensorflow:
    command = [sys.executable, '-c',
               _WITHOUT_TENSORFLOW.format(args=command[1:], module=None)]
  result = subprocess.run(command, cwd=ROOT, env=run_env, capture_output=True,
                          text=True, timeout=900, check=False)
  with open(log, 'a') as f:
    f.write(f'$ {" ".join(command[:3])} ...\n{result.stdout}{result.stderr}')
  if killed:
    if peers_may_end_it:
      assert result.returncode != 0
    else:
      assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not os.path.exists(os.path.join(workdir, 'metrics.json'))
    return None
  assert result.returncode == expect_returncode, result.stderr[-3000:]
  if expect_returncode:
    return result.stdout + result.stderr
  return result.stdout


def resumed_at(stdout):
  """The step a run said it resumed from, or None."""
  found = re.search(r'Resuming from the backup at step (\d+)', stdout)
  return int(found.group(1)) if found else None


def metrics_of(workdir):
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return json.load(f)


def _final_weights(workdir):
  model = keras.saving.load_model(
      os.path.join(workdir, 'checkpoints', 'last.keras'), compile=False)
  return [(w.path, np.asarray(w)) for w in model.weights]


def assert_same_final_weights(got_workdir, want_workdir):
  """Every weight of the two runs' checkpoints/last.keras, the strides
  included, is bit for bit the same (paired by position: two models loaded
  in one process get different layer names)."""
  got, want = _final_weights(got_workdir), _final_weights(want_workdir)
  assert len(got) == len(want)
  assert any('stride' in path for path, _ in want)
  for (_, g), (path, w) in zip(got, want):
    assert g.dtype == w.dtype and g.shape == w.shape, path
    assert np.array_equal(g, w, equal_nan=True), path


def _varies(key):
  return (key.endswith('_this_time') or 'wall_time' in key
          or 'per_second' in key or key.endswith('seconds'))


def comparable(metrics):
  """metrics.json without what differs between runs of one config (times,
  and what this process did), at any depth."""
  if not isinstance(metrics, dict):
    return metrics
  return {k: comparable(v) for k, v in metrics.items() if not _varies(k)}
