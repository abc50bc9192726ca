"""The layers and models on TensorFlow, JAX and PyTorch (one process each).

Keras chooses its backend once, from KERAS_BACKEND, at import: each backend's
cases (`tests/backend_cases.py`) run in a fresh `python -m pytest` process.
A backend that is not installed is skipped (the test extra installs JAX and
PyTorch; see the README). What a backend's cases skip is read back from the
subprocess and must be exactly what that backend is expected to skip, so that
no check silently stops running.
"""

import collections
import importlib.util
import os
import re
import subprocess
import sys

import pytest

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

_DIR = os.path.dirname(os.path.abspath(__file__))
_CASES = os.path.join(_DIR, 'backend_cases.py')
_BACKENDS = ('tensorflow', 'jax', 'torch')
_LAYER_CASES = ('standard or official or reference or 1d or constraint or '
                'resnet_forward or mel_frontend')
_TRAINING_CASES = f'not ({_LAYER_CASES}) and not artifacts'
# The processes each backend's cases run in (xdist spreads them), as
# (backend, shard): -k expression. Each process costs a start-up (importing
# the backend, Keras and the package), so a backend's cases share as few as
# keep the three largest, each about 100 CPU-s, apart: TensorFlow's, JAX's
# layer checks, and JAX's training and models with all of PyTorch's, which
# run in `test_model_saved_on_one_backend_loads_on_the_others` (those
# processes also save and load its artifacts).
_SHARDS = {('tensorflow', 'all'): 'not artifacts',
           ('jax', 'layers'): _LAYER_CASES}
_CROSS_BACKEND_SHARDS = {'jax': _TRAINING_CASES, 'torch': 'not artifacts'}
# {(backend, shard): {skip reason (a substring): tests skipped for it}}.
_EXPECTED_SKIPS = {
    ('torch', 'all'): {'PyTorch reads the strides at every call': 2,
                       'Keras does not compile PyTorch steps': 3},
}


def _installed(backend):
  return importlib.util.find_spec(backend) is not None


def _run(backend, *pytest_args, artifacts=None, timeout=900):
  env = subprocess_testing.backend_env(backend)
  if artifacts is not None:
    env['DIFFSTRIDE_BACKEND_ARTIFACTS'] = str(artifacts)
  command = [sys.executable, '-m', 'pytest', '-q', '-rs', '-p',
             'no:cacheprovider', '-p', 'no:randomly', '-W',
             'ignore::DeprecationWarning', _CASES, *pytest_args]
  result = subprocess.run(command, cwd=os.path.dirname(_DIR), env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  output = result.stdout[-20000:] + result.stderr[-5000:]
  assert result.returncode == 0, f'{backend}:\n{output}'
  return output


def _skips(output):
  """{reason: count} from pytest's -rs summary lines."""
  counts = collections.Counter()
  for count, reason in re.findall(r'^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$',
                                  output, re.M):
    counts[reason] += int(count)
  return counts


def _check_skips(backend, shard, output):
  """What the process skipped is exactly what `_EXPECTED_SKIPS` says."""
  expected = _EXPECTED_SKIPS.get((backend, shard), {})
  got = collections.Counter()
  for reason, count in _skips(output).items():
    known = [k for k in expected if k in reason]
    assert known, f'{backend}: unexpected skip {reason!r}\n{output}'
    got[known[0]] += count
  assert got == collections.Counter(expected), output


@pytest.mark.slow
@pytest.mark.parametrize('backend, shard', _SHARDS,
                         ids=[f'{b}-{s}' for b, s in _SHARDS])
def test_backend(backend, shard):
  if not _installed(backend):
    pytest.skip(f'{backend} is not installed')
  output = _run(backend, '-k', _SHARDS[backend, shard])
  _check_skips(backend, shard, output)


def test_every_case_runs_on_every_backend():
  """The shards of `test_backend` and of the cross-backend test together
  run every case of backend_cases.py on every backend."""
  runs = {b: [k for (backend, _), k in _SHARDS.items() if backend == b]
          for b in _BACKENDS}
  for backend, expression in _CROSS_BACKEND_SHARDS.items():
    runs[backend].append(expression)
  assert runs['tensorflow'] == ['not artifacts']
  assert sorted(runs['jax']) == sorted([_LAYER_CASES, _TRAINING_CASES])
  assert runs['torch'] == ['not artifacts']


@pytest.mark.slow
def test_model_saved_on_one_backend_loads_on_the_others(tmp_path,
                                                       monkeypatch):
  """A `.keras` file saved on each backend loads on every other one with
  equal outputs. This process is TensorFlow: it saves first and loads last;
  JAX and PyTorch run in their own processes in between, each loading what
  was saved before it, then saving its own model. Those processes first
  run JAX's training and model cases and all of PyTorch's (`_SHARDS`)."""
  import keras  # pylint: disable=g-import-not-at-top
  assert keras.backend.backend() == 'tensorflow'
  others = [b for b in _BACKENDS[1:] if _installed(b)]
  if not others:
    pytest.skip('needs JAX or PyTorch')
  monkeypatch.setenv('DIFFSTRIDE_BACKEND_ARTIFACTS', str(tmp_path))
  import backend_cases  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(backend_cases, '_ARTIFACTS', str(tmp_path))
  backend_cases.test_save_artifacts()
  for backend in others:  # Their cases too (see _SHARDS), artifacts last.
    output = _run(backend, '-k',
                  f'({_CROSS_BACKEND_SHARDS[backend]}) or artifacts',
                  artifacts=tmp_path)
    _check_skips(backend, 'all' if backend == 'torch' else 'training', output)
  backend_cases.test_load_artifacts_of_other_backends()
  order = ['tensorflow'] + others + ['tensorflow']
  loaded = sorted(p.name for p in tmp_path.glob('*.ok'))
  expected = {f'{a}_to_{b}.ok' for i, b in enumerate(order)
              for a in order[:i] if a != b}
  assert set(loaded) == expected, loaded
