"""DiffStride1D: numerics, gradients, agreement with the 2-D layer, saving."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride
import diffstride.experiments  # Registers the layers with gin (the harness).
from diffstride import pooling1d

_R = 4.0


def _random(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(x, stride, smoothness=_R, cropping=True):
  """Direct numpy DiffStride along the last axis of x [..., T] (float64)."""
  length = x.shape[-1]
  stride = max(stride, length / (length - smoothness))
  t = max(length / stride, 2.0) / 2.0 + 1.0
  n = np.arange(length // 2 + 1)
  mask = np.clip((smoothness + t - n) / smoothness, 0.0, 1.0)
  spec = np.fft.rfft(x.astype(np.float64), axis=-1) * mask
  if cropping:
    bins = int(np.sum(mask > 0))
    return np.fft.irfft(spec[..., :bins], n=2 * (bins - 1), axis=-1)
  return np.fft.irfft(spec, n=2 * (length // 2), axis=-1)


@pytest.mark.parametrize('implementation', ('matmul', 'fft'))
@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
@pytest.mark.parametrize('length, stride, cropping', [
    (64, 2.0, True), (63, 3.3, True), (50, 1.0, True), (97, 5.5, True),
    (40, 2.6, False), (21, 1.7, True)])
def test_matches_numpy_reference(implementation, data_format, length, stride,
                                 cropping):
  x = _random((2, 3, length))  # [B, C, T]
  layer = diffstride.DiffStride1D(strides=stride, cropping=cropping,
                                  data_format=data_format,
                                  implementation=implementation)
  inputs = x if data_format == 'channels_first' else x.transpose(0, 2, 1)
  y = layer(inputs).numpy()
  if data_format == 'channels_last':
    y = y.transpose(0, 2, 1)
  expected = _reference(x, stride, cropping=cropping)
  assert y.shape == expected.shape
  assert y.shape[-1] == pooling1d.diffstride1d_output_length(
      length, stride, cropping=cropping)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=2e-5)


def test_output_length_examples():
  assert pooling1d.diffstride1d_output_length(64, 4.0) == 24
  # The same as the 2-D layer's width.
  for length, stride in [(64, 4.0), (33, 2.5), (100, 1.3), (16000, 2.0)]:
    assert (pooling1d.diffstride1d_output_length(length, stride) ==
            diffstride.diffstride_output_size(8, length, (2.0, stride))[1])
  # Roughly T / S + 2R.
  assert abs(pooling1d.diffstride1d_output_length(1000, 4.0) - 258) <= 2


def _loss(y, weights):
  return tf.reduce_sum(weights * tf.tanh(y))


@pytest.mark.parametrize('implementation', ('matmul', 'fft'))
@pytest.mark.parametrize('width_stride, height, height_stride', [
    (2.7, 12, 2.0), (1.6, 9, 3.1), (3.4, 16, 1.0)])
def test_agrees_with_2d_layer_on_inputs_constant_along_height(
    implementation, width_stride, height, height_stride):
  """A 2-D DiffStride on x[b, h, w, c] = r[b, w, c] (constant along h):
  rfft2d is zero outside row 0 (DC), whose mask is 1 and whose inverse is
  constant over the h' output rows with a factor H / h' (the unnormalised
  forward and normalised inverse DFT lengths differ). So each output row is
  (H / h') * DiffStride1D(r) with the width stride, and so are its
  gradients."""
  rows = _random((2, 45, 3), seed=1)  # [B, T, C]
  x2d = np.repeat(rows[:, None], height, axis=1)  # [B, H, T, C]
  layer1 = diffstride.DiffStride1D(strides=width_stride,
                                   data_format='channels_last',
                                   implementation=implementation)
  layer2 = diffstride.DiffStride(strides=(height_stride, width_stride),
                                 data_format='channels_last',
                                 implementation=implementation)
  with tf.GradientTape(persistent=True) as tape:
    y1 = layer1(rows)
    y2 = layer2(x2d)
    out_h = y2.shape[1]
    scaled = y2 * (out_h / height)
    weights = tf.constant(_random(y1.shape, seed=2))
    loss1 = _loss(y1, weights)
    loss2 = _loss(scaled[:, 0], weights)
  assert y1.shape[1] == y2.shape[2]
  np.testing.assert_allclose(
      scaled.numpy(), np.repeat(y1.numpy()[:, None], out_h, axis=1),
      rtol=1e-4, atol=1e-5)
  g1 = tape.gradient(loss1, layer1.strides).numpy()
  g2 = tape.gradient(loss2, layer2.strides).numpy()
  assert abs(g1[0]) > 1e-3  # Not vacuous.
  np.testing.assert_allclose(g1[0], g2[1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('implementation', ('matmul', 'fft'))
@pytest.mark.parametrize('stride', [2.3, 3.7, 1.45])
def test_stride_gradient_matches_finite_differences(implementation, stride):
  x = tf.constant(_random((2, 70, 2), seed=3))
  layer = diffstride.DiffStride1D(strides=stride, data_format='channels_last',
                                  implementation=implementation)
  layer.build(x.shape)
  # The kept length is piecewise constant in the stride: difference within
  # a piece, with a tanh head so that every kept bin matters.
  out_len = layer(x).shape[1]
  weights = tf.constant(_random((2, out_len, 2), seed=4), tf.float64)

  def loss_at(value):
    layer.strides.assign([value])
    return tf.reduce_sum(weights * tf.tanh(tf.cast(layer(x), tf.float64)))

  with tf.GradientTape() as tape:
    loss = loss_at(stride)
  grad = float(tape.gradient(loss, layer.strides)[0])
  eps = 1e-3
  assert layer(x).shape[1] == out_len
  numeric = (float(loss_at(stride + eps)) - float(loss_at(stride - eps))) / (
      2 * eps)
  assert abs(grad) > 1e-3
  np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=1e-3)


def test_input_gradient_is_the_transposed_operator():
  x = tf.constant(_random((1, 32, 1), seed=5))
  layer = diffstride.DiffStride1D(strides=2.5, data_format='channels_last')
  y = layer(x)
  v = tf.constant(_random(y.shape, seed=6))
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = tf.reduce_sum(layer(x) * v)
  grad = tape.gradient(out, x).numpy()[0, :, 0]
  # Linear in x: the gradient equals the numpy operator's transpose applied
  # to v.
  eye = np.eye(32)[:, None, :]  # 32 basis signals [32, 1, 32]
  op = _reference(eye, 2.5)[:, 0, :]  # [32, T']
  np.testing.assert_allclose(grad, op @ v.numpy()[0, :, 0], rtol=1e-4,
                             atol=1e-5)


def test_stride_below_minimum_is_raised_with_gradient():
  x = tf.constant(_random((1, 20, 2), seed=7))
  layer = diffstride.DiffStride1D(strides=1.0, data_format='channels_last')
  layer.build(x.shape)
  minimum = np.float32(20) / np.float32(20 - _R)
  np.testing.assert_allclose(layer.strides.numpy(), [minimum])
  layer.strides.assign([1.0])  # As an optimizer step could leave it.
  np.testing.assert_allclose(layer(x).numpy(),
                             _reference(x.numpy().transpose(0, 2, 1),
                                        1.0).transpose(0, 2, 1),
                             rtol=1e-4, atol=1e-5)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.tanh(layer(x)) * 0.3)
  assert tape.gradient(loss, layer.strides) is not None
  assert layer.strides.constraint(tf.constant([1.0])).numpy()[0] == minimum


def test_trains_and_limits_hold():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((64, 1)),
      keras.layers.Conv1D(4, 3, padding='same'),
      diffstride.DiffStride1D(strides=3.0, data_format='channels_last',
                              lower_limit_stride=2.0, upper_limit_stride=3.5),
      keras.layers.Conv1D(4, 3, padding='same', activation='relu'),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(2),
  ])
  model.compile(keras.optimizers.Adam(0.5),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = _random((16, 64, 1), seed=8)
  y = (x[:, ::2, 0].std(axis=1) > x[:, :, 0].std(axis=1)).astype(np.int32)
  layer = model.layers[1]
  before = layer.strides.numpy().copy()
  model.fit(x, y, epochs=3, batch_size=8, verbose=0)
  after = layer.strides.numpy()
  assert not np.allclose(before, after)
  assert 2.0 <= after[0] <= 3.5


def test_dynamic_length_and_shapes():
  layer = diffstride.DiffStride1D(strides=2.0, data_format='channels_last')
  fn = tf.function(layer, input_signature=[
      tf.TensorSpec([None, None, 3], tf.float32)])
  x = _random((2, 40, 3), seed=9)
  np.testing.assert_allclose(fn(x).numpy(), layer(x).numpy(), rtol=1e-5,
                             atol=1e-6)
  assert layer.compute_output_shape((2, 40, 3)) == (2, None, 3)
  first = diffstride.DiffStride1D(strides=2.0)
  assert first.compute_output_shape((2, 3, 40)) == (2, 3, None)


@pytest.mark.parametrize('kwargs, match', [
    (dict(strides=0.5), 'strides'),
    (dict(strides=(2.0, 2.0)), 'one number'),
    (dict(strides=float('nan')), 'finite'),
    (dict(smoothness_factor=0.0), 'smoothness_factor'),
    (dict(data_format='nhwc'), 'data_format'),
    (dict(implementation='dft'), 'implementation'),
    (dict(lower_limit_stride=3.0, upper_limit_stride=2.0), 'must not exceed'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    diffstride.DiffStride1D(**kwargs)


def test_bad_inputs():
  with pytest.raises(ValueError, match='rank-3'):
    diffstride.DiffStride1D(data_format='channels_last')(_random((2, 8, 8, 1)))
  with pytest.raises(ValueError, match='too small'):
    diffstride.DiffStride1D(data_format='channels_last')(_random((2, 4, 1)))


_ARGS = dict(strides=2.5, smoothness_factor=3.0, cropping=False,
             trainable=False, lower_limit_stride=1.2, upper_limit_stride=6.0,
             data_format='channels_last', implementation='fft')


def test_config_round_trip():
  layer = diffstride.DiffStride1D(name='ds1', **_ARGS)
  config = layer.get_config()
  for key, value in _ARGS.items():
    assert config[key] == value, key
  clone = diffstride.DiffStride1D.from_config(config)
  assert clone.get_config() == config
  revived = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(revived) is diffstride.DiffStride1D
  assert revived.get_config() == config


def test_keras_file_round_trip(tmp_path):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((128, 2)),
      keras.layers.Conv1D(4, 5, padding='same'),
      diffstride.DiffStride1D(strides=3.3, smoothness_factor=2.0,
                              data_format='channels_last'),
      keras.layers.Conv1D(4, 3, padding='same', activation='relu'),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(3),
  ])
  model.layers[1].strides.assign([2.71])
  x = _random((2, 128, 2), seed=10)
  path = str(tmp_path / 'm.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  layer = loaded.layers[1]
  assert type(layer) is diffstride.DiffStride1D
  assert layer.smoothness_factor == 2.0
  np.testing.assert_allclose(layer.strides.numpy(), [2.71], rtol=1e-6)
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_mixed_precision_keeps_float32_maths_and_strides():
  x = _random((2, 48, 3), seed=11)
  reference = diffstride.DiffStride1D(strides=2.4,
                                      data_format='channels_last')(x).numpy()
  layer = diffstride.DiffStride1D(strides=2.4, data_format='channels_last',
                                  dtype='mixed_float16')
  with tf.GradientTape() as tape:
    y = layer(x.astype(np.float16))
    loss = tf.reduce_sum(tf.tanh(tf.cast(y, tf.float32)))
  assert y.dtype == tf.float16
  assert layer.strides.dtype == 'float32'
  assert tape.gradient(loss, layer.strides).dtype == tf.float32
  np.testing.assert_allclose(y.numpy().astype(np.float32), reference,
                             rtol=1e-2, atol=1e-2)


def test_gin_builds_a_plain_layer():
  import gin  # pylint: disable=g-import-not-at-top
  gin.parse_config("""
      DiffStride1D.strides = 3.0
      DiffStride1D.data_format = 'channels_last'
  """)  # tests/conftest.py clears gin before and after each test.
  layer = gin.get_configurable('DiffStride1D')()
  assert isinstance(layer, diffstride.DiffStride1D)
  assert layer.get_config()['strides'] == 3.0
  restored = keras.layers.deserialize(keras.layers.serialize(layer))
  assert isinstance(restored, diffstride.DiffStride1D)
