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

  def loss_and_gradient(value):
    layer.strides.assign([value])
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.tanh(tf.cast(layer(x), tf.float64)) * 0.3)
    return float(loss), float(tape.gradient(loss, layer.strides)[0])

  # Straight-through: below the minimum the stride is raised in the value
  # (the loss is flat there) but its gradient is the one at the minimum,
  # which is the slope of the loss just above it.
  loss_below, grad_below = loss_and_gradient(1.0)
  loss_min, grad_min = loss_and_gradient(minimum)
  assert abs(grad_min) > 1e-2
  np.testing.assert_allclose(loss_below, loss_min, rtol=1e-6)
  np.testing.assert_allclose(grad_below, grad_min, rtol=1e-6)
  eps = 1e-3
  loss_eps, _ = loss_and_gradient(minimum + eps)
  loss_2eps, _ = loss_and_gradient(minimum + 2 * eps)
  assert layer(x).shape[1] == 20  # The same output length: one piece.
  forward = (-3 * loss_min + 4 * loss_eps - loss_2eps) / (2 * eps)
  np.testing.assert_allclose(grad_min, forward, rtol=1e-2)
  assert layer.strides.constraint(tf.constant([1.0])).numpy()[0] == minimum


@pytest.mark.parametrize('sign, limit', [(1.0, 3.5), (-1.0, 2.0)],
                         ids=['upper', 'lower'])
def test_trains_and_limits_hold(sign, limit):
  """fit on the loss +-(output energy) drives the stride into its upper
  (+) or lower (-) limit, where the optimizer's constraint stops it.

  Within a piece of constant output length the output's energy decreases as
  the stride grows (Parseval: every mask value is non-increasing in S), so
  d energy / dS < 0: gradient descent on +energy raises the stride, on
  -energy lowers it.
  """
  x = _random((16, 64, 1), seed=8)
  dummy_targets = np.zeros((16, 1), np.float32)
  layer = diffstride.DiffStride1D(strides=3.0, data_format='channels_last',
                                  lower_limit_stride=2.0,
                                  upper_limit_stride=3.5)
  model = keras.Sequential([keras.Input((64, 1)), layer])

  def energy_loss(y_true, y_pred):
    del y_true
    return sign * keras.ops.mean(keras.ops.square(y_pred))

  def loss_at(value):
    layer.strides.assign([value])  # Unconstrained, as a raw assignment is.
    y = layer(x)
    return sign * float(np.mean(np.square(y.numpy().astype(np.float64)))), (
        y.shape[1])

  def gradient_at(value):
    layer.strides.assign([value])
    with tf.GradientTape() as tape:
      loss = energy_loss(None, layer(x))
    return float(tape.gradient(loss, layer.strides)[0])

  # The stride's gradient: its sign as derived, its value as the central
  # difference of the loss (within one piece of output length).
  eps = 1e-3
  grad = gradient_at(3.0)
  (up, n_up), (down, n_down) = loss_at(3.0 + eps), loss_at(3.0 - eps)
  assert n_up == n_down
  assert sign * grad < -0.1
  np.testing.assert_allclose(grad, (up - down) / (2 * eps), rtol=2e-2)

  # At the limit the forward pass clips too: beyond it nothing changes, and
  # the gradient (1 on the closed interval, as tf.clip_by_value's) is the
  # one-sided difference from inside.
  at_limit, n_limit = loss_at(limit)
  beyond, n_beyond = loss_at(limit + sign * 0.4)
  assert n_beyond == n_limit
  np.testing.assert_allclose(beyond, at_limit, rtol=1e-6)
  inside, n_inside = loss_at(limit - sign * eps)
  assert n_inside == n_limit
  grad_at_limit = gradient_at(limit)
  assert sign * grad_at_limit < -0.1
  np.testing.assert_allclose(grad_at_limit,
                             (at_limit - inside) / (sign * eps), rtol=2e-2)

  # One small SGD step in fit moves the stride by exactly -lr * gradient.
  layer.strides.assign([3.0])
  learning_rate = 0.1 / abs(grad)
  model.compile(keras.optimizers.SGD(learning_rate), energy_loss)
  model.fit(x, dummy_targets, batch_size=16, epochs=1, shuffle=False,
            verbose=0)
  after_one_step = float(layer.strides.numpy()[0])
  np.testing.assert_allclose(after_one_step - 3.0, -learning_rate * grad,
                             rtol=1e-3)
  assert 2.0 < after_one_step < 3.5

  # Steps of about two strides overshoot the limit: the constraint clips the
  # stride exactly to it, and it stays there.
  model.optimizer.learning_rate.assign(2.0 / abs(grad))
  seen = []
  record = keras.callbacks.LambdaCallback(
      on_train_batch_end=lambda batch, logs: seen.append(
          float(layer.strides.numpy()[0])))
  model.fit(x, dummy_targets, batch_size=16, epochs=3, shuffle=False,
            verbose=0, callbacks=[record])
  assert seen == [limit] * 3, seen
  assert layer.strides.numpy()[0] == np.float32(limit)


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
