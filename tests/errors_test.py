"""Invalid arguments and inputs raise clear errors naming the culprit."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride

_STRIDED = (diffstride.DiffStride, diffstride.FixedSpectralPooling)
_STRIDED_IDS = ('DiffStride', 'FixedSpectralPooling')


@pytest.mark.parametrize('layer_cls', _STRIDED, ids=_STRIDED_IDS)
@pytest.mark.parametrize('strides, message', [
    (0.5, 'must be >= 1'),
    (0, 'must be >= 1'),
    (-2.0, 'must be >= 1'),
    ((2.0, 0.9), 'must be >= 1'),
    (float('nan'), 'must be finite'),
    ((2.0, float('nan')), 'must be finite'),
    (float('inf'), 'must be finite'),
    ((float('-inf'), 2.0), 'must be finite'),
    ('a', 'number or a pair'),
    (None, 'number or a pair'),
    ([1, 2, 3], 'number or a pair'),
    ((), 'number or a pair'),
    (True, 'number or a pair'),
    (('2', 2), 'must hold numbers'),
    ((None, 2.0), 'must hold numbers'),
])
def test_bad_strides(layer_cls, strides, message):
  with pytest.raises(ValueError, match=rf'`strides`.*{message}'):
    layer_cls(strides=strides)


@pytest.mark.parametrize('strides', [1, 1.0, (1, 7), np.array([2.5, 1.5]),
                                     (np.float32(2.0), np.int64(3))])
def test_good_strides(strides):
  layer = diffstride.DiffStride(strides=strides)
  assert len(layer.get_config()['strides']) == 2
  diffstride.FixedSpectralPooling(strides=strides)


@pytest.mark.parametrize('value', [-1.0, 0, 0.0, float('nan'), float('inf'),
                                   '4', None])
def test_bad_smoothness_factor(value):
  with pytest.raises(ValueError, match='`smoothness_factor`'):
    diffstride.DiffStride(smoothness_factor=value)


def test_shared_stride_needs_equal_strides():
  with pytest.raises(ValueError, match='`shared_stride=True`.*strides'):
    diffstride.DiffStride(strides=(2.0, 3.0), shared_stride=True)
  layer = diffstride.DiffStride(strides=(3.0, 3.0), shared_stride=True)
  layer(tf.zeros([1, 1, 16, 16]))
  assert tuple(layer.strides.shape) == (1,)


@pytest.mark.parametrize('make', [
    lambda df: diffstride.DiffStride(data_format=df),
    lambda df: diffstride.FixedSpectralPooling(data_format=df),
    lambda df: diffstride.SpatialPooling(data_format=df),
], ids=('DiffStride', 'FixedSpectralPooling', 'SpatialPooling'))
@pytest.mark.parametrize('data_format', ['NHWC', 'channels_middle', '', 1])
def test_unknown_data_format(make, data_format):
  with pytest.raises(ValueError, match='`data_format`'):
    make(data_format)


@pytest.mark.parametrize('layer_cls', _STRIDED, ids=_STRIDED_IDS)
def test_unknown_implementation(layer_cls):
  with pytest.raises(ValueError, match='`implementation`.*cuda'):
    layer_cls(implementation='cuda')


@pytest.mark.parametrize('layer_cls', _STRIDED, ids=_STRIDED_IDS)
@pytest.mark.parametrize('shape', [(2, 16, 16), (1, 2, 3, 16, 16), (16, 16)])
def test_input_rank(layer_cls, shape):
  with pytest.raises(ValueError, match=rf'rank-4 input.*rank {len(shape)}'):
    layer_cls()(tf.zeros(shape))


def test_input_rank_symbolic():
  with pytest.raises(ValueError, match='rank-4 input'):
    diffstride.DiffStride()(keras.Input((16, 16)))
  with pytest.raises(ValueError, match='ndim=4'):
    diffstride.SpatialPooling()(tf.zeros([2, 16, 16]))


@pytest.mark.parametrize('data_format, shape, axis', [
    ('channels_first', (1, 2, 4, 4), 'height 4'),
    ('channels_first', (1, 2, 16, 3), 'width 3'),
    ('channels_last', (1, 4, 16, 2), 'height 4'),
    ('channels_last', (1, 16, 4, 2), 'width 4'),
])
def test_spatial_size_must_exceed_smoothness(data_format, shape, axis):
  layer = diffstride.DiffStride(data_format=data_format)  # R = 4
  with pytest.raises(ValueError, match=rf'{axis}.*smoothness_factor=4'):
    layer(tf.zeros(shape))
  with pytest.raises(ValueError, match='smoothness_factor'):
    diffstride.DiffStride(data_format=data_format)(keras.Input(shape[1:]))


def test_spatial_size_just_above_smoothness_works():
  y = diffstride.DiffStride()(tf.random.normal([1, 2, 5, 5]))
  assert y.shape[:2] == (1, 2)
  assert np.all(np.isfinite(y.numpy()))
  y = diffstride.DiffStride(smoothness_factor=2.0, data_format='channels_last')(
      tf.random.normal([1, 3, 3, 2]))
  assert np.all(np.isfinite(y.numpy()))


def test_spatial_size_checked_at_run_time_when_unknown():
  layer = diffstride.DiffStride()
  forward = tf.function(layer,
                        input_signature=[tf.TensorSpec([None, 2, None, None])])
  assert forward(tf.zeros([1, 2, 8, 8])).shape[:2] == (1, 2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='too small'):
    forward(tf.zeros([1, 2, 4, 4]))


def test_fixed_spectral_pooling_needs_two_pixels():
  with pytest.raises(ValueError, match='height of at least 2'):
    diffstride.FixedSpectralPooling()(tf.zeros([1, 2, 1, 16]))


@pytest.mark.parametrize('kwargs, message', [
    (dict(lower_limit_stride=3.0, upper_limit_stride=2.0),
     '`lower_limit_stride`.*`upper_limit_stride`'),
    (dict(lower_limit_stride=0.5), '`lower_limit_stride`.*>= 1'),
    (dict(upper_limit_stride=0.5), '`upper_limit_stride`.*>= 1'),
    (dict(lower_limit_stride=float('nan')), '`lower_limit_stride`.*finite'),
    (dict(upper_limit_stride=float('inf')), '`upper_limit_stride`.*finite'),
    (dict(upper_limit_stride='3'), '`upper_limit_stride`'),
])
def test_bad_stride_limits(kwargs, message):
  with pytest.raises(ValueError, match=message):
    diffstride.DiffStride(**kwargs)


def test_equal_stride_limits_are_allowed():
  layer = diffstride.DiffStride(strides=2.0, lower_limit_stride=2.0,
                                upper_limit_stride=2.0)
  x = tf.constant(np.random.default_rng(0).standard_normal([1, 1, 32, 32]),
                  tf.float32)
  expected = diffstride.DiffStride(strides=2.0)(x).numpy()
  assert expected.shape == (1, 1, 24, 24)  # (Strides 3, 1.5 give 20 x 30.)
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6,
                             atol=1e-6)
  # The range is the single stride 2: the optimizer's constraint maps every
  # stride to it, and so does the forward pass.
  for strides in ([1.0, 3.5], [float('nan'), 2.5]):
    constrained = layer.strides.constraint(tf.constant(strides)).numpy()
    np.testing.assert_array_equal(constrained, [2.0, 2.0])
  layer.strides.assign([3.0, 1.5])
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6,
                             atol=1e-6)


def test_stride_constraint_limits_order():
  with pytest.raises(ValueError, match='`lower_limit`.*`upper_limit`'):
    diffstride.StrideConstraint(3.0, 2.0)
  with pytest.raises(ValueError, match='`lower_limit`.*`upper_limit`'):
    diffstride.StrideConstraint(None, 0.5)  # default lower limit is 1


@pytest.mark.parametrize('lower, upper', [(float('nan'), None),
                                          (None, float('nan')),
                                          ('a', None)])
def test_stride_constraint_rejects_bad_limits(lower, upper):
  try:
    constraint = diffstride.StrideConstraint(lower, upper)
  except ValueError as e:
    assert 'lower_limit' in str(e) or 'upper_limit' in str(e), str(e)
    return
  clipped = constraint(tf.constant([2.0])).numpy()
  assert False, f'accepted {lower!r}, {upper!r}; clips 2.0 to {clipped}'


@pytest.mark.parametrize('strides', [(1.5, 2), 2.5, (2, 3.0001)])
def test_spatial_pooling_fractional_strides(strides):
  with pytest.raises(ValueError, match='`strides` of SpatialPooling.*whole'):
    diffstride.SpatialPooling(strides=strides)


@pytest.mark.parametrize('strides', [0, 0.5, float('nan'), 'a'])
def test_spatial_pooling_bad_strides(strides):
  with pytest.raises(ValueError, match='`strides`'):
    diffstride.SpatialPooling(strides=strides)


def test_spatial_pooling_whole_float_strides_work():
  layer = diffstride.SpatialPooling(strides=(2.0, 3.0),
                                    data_format='channels_last')
  assert layer.strides == (2, 3)
  assert layer(tf.zeros([1, 7, 7, 2])).shape == (1, 4, 3, 2)


def test_stride_constraint_keeps_non_finite_updates_in_range():
  constraint = diffstride.StrideConstraint(lower_limit=1.5, upper_limit=6.0)
  got = constraint(tf.constant([np.nan, np.inf, -np.inf, 3.0])).numpy()
  np.testing.assert_array_equal(got, [1.5, 6.0, 1.5, 3.0])
  layer = diffstride.DiffStride(data_format='channels_last')
  layer.build((1, 16, 16, 1))
  floor = 16 / 12
  got = layer.strides.constraint(tf.constant([np.nan, 0.5])).numpy()
  np.testing.assert_allclose(got, [floor, floor], rtol=1e-6)
