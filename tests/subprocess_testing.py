"""Runs a test script in a fresh Python process and reads its result.

Scripts that need their own TensorFlow set-up (two logical CPU devices for a
MirroredStrategy, set before TensorFlow initialises), or another Keras backend
(`run_backend_script`), print one line `RESULT <json>`; the runners return
that JSON.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# XLA's cheapest CPU optimisation level: XLA compiles every JAX program
# (eager operations included) and every TensorFlow step with jit_compile, and
# tests run each one a few times; this about halves their time. And XLA's
# former CPU code generation for fusions (its elemental emitters, not the
# newer fusion emitters): most of the compiles are of JAX's eager operations,
# one small program each, and those compile about a third faster with it
# (tests/backend_cases.py's JAX layer checks: 79 -> 53 CPU-s). Both flags
# are known to the XLA of TensorFlow and of jaxlib (an unknown flag in
# XLA_FLAGS stops the process). Numbers are checked to tolerances that do
# not depend on them. tests/conftest.py sets them for the whole test
# session, so subprocesses inherit them.
_CHEAP_XLA_FLAGS = ('--xla_backend_optimization_level=0',
                    '--xla_llvm_disable_expensive_passes=true',
                    '--xla_cpu_use_fusion_emitters=false')


def with_cheap_xla_flags(env: dict) -> dict:
  """`env` with `_CHEAP_XLA_FLAGS` added to its XLA_FLAGS (once)."""
  flags = env.get('XLA_FLAGS', '').split()
  flags += [f for f in _CHEAP_XLA_FLAGS if f not in flags]
  return dict(env, XLA_FLAGS=' '.join(flags))


# One TensorFlow thread per pool. The suite runs three test processes (and
# their subprocesses) on two cores: TensorFlow's default pools (one thread
# per core each) then wait on each other, and the same tests took 17% more
# CPU time (a subset of tests/training_test.py, measured). Numbers do not
# depend on it; a variable already set is kept.
_ONE_TENSORFLOW_THREAD = {'TF_NUM_INTRAOP_THREADS': '1',
                          'TF_NUM_INTEROP_THREADS': '1'}


def session_env(env: dict) -> dict:
  """`env` as the whole test session runs with: `with_cheap_xla_flags` and
  one TensorFlow thread per pool (`_ONE_TENSORFLOW_THREAD`, unless set)."""
  return with_cheap_xla_flags({**_ONE_TENSORFLOW_THREAD, **env})


def backend_env(backend: str) -> dict:
  """The environment of a test process on Keras backend `backend`.

  One thread (torch's default of one per core is several times slower on two
  cores that other processes share) and XLA's cheapest optimisation level
  (`with_cheap_xla_flags`).
  """
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL='3',
             CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu', OMP_NUM_THREADS='1')
  env.pop('PYTEST_XDIST_WORKER', None)
  return with_cheap_xla_flags(env)


def run_backend_script(script: str, backend: str,
                       timeout: float = 600) -> dict:
  """Runs `script` under Keras backend `backend` in a fresh process
  (`backend_env`); skips the calling test if `backend` is not installed.
  Returns the JSON of the script's `RESULT ` line; the assertion messages
  hold the exit code, stdout and stderr.
  """
  if importlib.util.find_spec(backend) is None:
    pytest.skip(f'{backend} is not installed')
  env = backend_env(backend)
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=ROOT,
                        check=False)
  output = (f'{backend} (exit {proc.returncode})\nstdout:\n'
            f'{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-10000:]}')
  assert proc.returncode == 0, output
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(lines) == 1, output
  return json.loads(lines[0][len('RESULT '):])


def run_script(script: str, timeout: float = 600) -> dict:
  """Runs `script` with `python -c` from the repository root.

  Returns:
    The JSON of the script's single `RESULT ` line.

  Raises:
    AssertionError: with the script's stderr if it failed, or its stdout if
      it did not print exactly one result line.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(lines) == 1, proc.stdout[-2000:]
  return json.loads(lines[0][len('RESULT '):])
