"""Outputs and gradients against the official DiffStride implementation.

The fixture `data/official_diffstride.npz` holds what google-research/diffstride
computes on nine cases (see `data/official_diffstride_README.md`): the output y,
d sum(sin(y)) / dx and, for DiffStride, d sum(sin(y)) / d strides.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np
import pytest
import tensorflow as tf

import diffstride

_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                        'official_diffstride.npz')
_IMPLEMENTATIONS = ('matmul', 'fft')
# Relative error (max abs diff / max abs reference). The fixture and the layer
# both compute in float32; 1e-4 leaves ~100 ulps for the different summation
# orders of FFTs vs dense DFT matmuls, and is far below any real mistake (a
# wrong mask value, bin weight or crop changes results at the 1e-2..1 level).
_RTOL = 1e-4


def _load():
  data = np.load(_FIXTURE)
  cases = json.loads(str(data['cases_json']))
  return data, cases


_DATA, _CASES = _load()
_LAYERS = {
    'DiffStride': diffstride.DiffStride,
    'FixedSpectralPooling': diffstride.FixedSpectralPooling,
}


def _relative_error(actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _build(case, implementation):
  kwargs = {k: v for k, v in case.items()
            if k not in ('layer', 'shape', 'output_shape')}
  kwargs['strides'] = tuple(kwargs['strides'])
  return _LAYERS[case['layer']](implementation=implementation, **kwargs)


def test_fixture_has_nine_cases():
  assert len(_CASES) == 9
  assert {c['layer'] for c in _CASES} == set(_LAYERS)


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
@pytest.mark.parametrize('index', range(len(_CASES)),
                         ids=[f'case{i}' for i in range(len(_CASES))])
def test_matches_official(index, implementation):
  case = _CASES[index]
  x = tf.constant(_DATA[f'case{index}_x'])
  assert tuple(x.shape) == tuple(case['shape'])
  layer = _build(case, implementation)
  layer.build(x.shape)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y = layer(x)
    loss = tf.reduce_sum(tf.sin(y))
  assert tuple(y.shape) == tuple(case['output_shape'])
  assert y.dtype == tf.float32
  assert _relative_error(y, _DATA[f'case{index}_y']) < _RTOL
  dx = tape.gradient(loss, x)
  assert _relative_error(dx, _DATA[f'case{index}_dx']) < _RTOL
  if case['layer'] == 'DiffStride':
    dstrides = tape.gradient(loss, layer.strides)
    expected = _DATA[f'case{index}_dstrides']
    assert dstrides is not None
    assert tuple(dstrides.shape) == expected.shape
    assert _relative_error(dstrides, expected) < _RTOL
  else:
    assert not layer.trainable_weights


@pytest.mark.parametrize('implementation', ('auto',) + _IMPLEMENTATIONS)
@pytest.mark.parametrize('data_format', ('channels_first', 'channels_last'))
@pytest.mark.parametrize('layer_cls, expected_hw', [
    (diffstride.DiffStride, (40, 24)),
    (diffstride.FixedSpectralPooling, (32, 16)),
], ids=['DiffStride', 'FixedSpectralPooling'])
def test_64x64_strides_2_4(layer_cls, expected_hw, data_format,
                           implementation):
  layer = layer_cls(strides=(2, 4), data_format=data_format,
                    implementation=implementation)
  if data_format == 'channels_first':
    x = tf.random.normal([2, 3, 64, 64], seed=1)
    expected = (2, 3) + expected_hw
  else:
    x = tf.random.normal([2, 64, 64, 3], seed=1)
    expected = (2,) + expected_hw + (3,)
  y = layer(x)
  assert tuple(y.shape) == expected


@pytest.mark.parametrize('index', range(len(_CASES)),
                         ids=[f'case{i}' for i in range(len(_CASES))])
def test_other_data_format_is_a_transpose(index):
  """The same case in the other layout gives the transposed fixture."""
  case = dict(_CASES[index])
  x = _DATA[f'case{index}_x']
  if case['data_format'] == 'channels_last':
    to_other, from_other = (0, 3, 1, 2), (0, 2, 3, 1)
    case['data_format'] = 'channels_first'
  else:
    to_other, from_other = (0, 2, 3, 1), (0, 3, 1, 2)
    case['data_format'] = 'channels_last'
  layer = _build(case, 'auto')
  y = layer(tf.constant(np.transpose(x, to_other)))
  y = np.transpose(y.numpy(), from_other)
  assert _relative_error(y, _DATA[f'case{index}_y']) < _RTOL


def _sweep_cases():
  """Deterministic odd/even sizes, strides, ramps and options."""
  rng = np.random.default_rng(2022)
  cases = []
  while len(cases) < 16:
    height, width = (int(v) for v in rng.integers(6, 40, size=2))
    smoothness = float(rng.choice([2.0, 3.0, 4.0, 2.5]))
    if min(height, width) <= smoothness:
      continue
    shared = len(cases) % 5 == 4
    s_h = float(rng.uniform(1.0, 5.0))
    s_w = s_h if shared else float(rng.uniform(1.0, 5.0))
    cases.append(dict(shape=(height, width), strides=(s_h, s_w),
                      smoothness_factor=smoothness, shared_stride=shared,
                      cropping=len(cases) % 4 != 3,
                      data_format=('channels_first' if len(cases) % 2
                                   else 'channels_last')))
  return cases


@pytest.mark.parametrize('case', _sweep_cases(),
                         ids=lambda c: '{}x{}_s{:.2f}-{:.2f}_R{}'.format(
                             *c['shape'], *c['strides'],
                             c['smoothness_factor']))
def test_matmul_and_fft_agree(case):
  """Both implementations give the same y, dx and d strides.

  The FFT path is a direct transcription of the official algorithm (and
  matches the fixture above); this sweeps the dense-operator path over shapes,
  strides and ramps the nine fixture cases do not cover.
  """
  case = dict(case)
  height, width = case.pop('shape')
  shape = ((2, 2, height, width) if case['data_format'] == 'channels_first'
           else (2, height, width, 2))
  x = tf.constant(np.random.default_rng(height * width).standard_normal(shape),
                  tf.float32)
  results = []
  for implementation in _IMPLEMENTATIONS:
    layer = diffstride.DiffStride(implementation=implementation, **case)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(tf.sin(y) * tf.cos(2.0 * y))
    results.append((y, tape.gradient(loss, x),
                    tape.gradient(loss, layer.strides)))
  for matmul, fft in zip(*results):
    assert _relative_error(matmul, fft) < _RTOL
