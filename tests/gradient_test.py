"""Gradients of the spectral layers: stride gradient, clamping, linearity."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride

_IMPLEMENTATIONS = ('matmul', 'fft')
_R = 4.0  # default smoothness_factor


def _random(shape, seed):
  return tf.constant(np.random.default_rng(seed).standard_normal(shape),
                     tf.float32)


def _loss_fn(layer, x, out_shape, channels_first, seed=0):
  """sum(w * tanh(conv3x3(layer(x)))) with a fixed random conv and weighting.

  A global average pool after the layer would only read the DC bin, whose mask
  value is 1 whatever the stride: its stride gradient is exactly zero and
  would make any gradient check vacuous. A 3x3 conv then a pointwise
  non-linearity and a fixed random weighting reads every kept frequency.
  The head runs in float64 so that only the layer's float32 noise is left.
  """
  rng = np.random.default_rng(seed)
  chans = out_shape[1] if channels_first else out_shape[3]
  kernel = tf.constant(rng.standard_normal((3, 3, chans, 4)) / 3.0, tf.float64)
  if channels_first:
    hw = out_shape[2:]
  else:
    hw = out_shape[1:3]
  weights = tf.constant(rng.standard_normal((out_shape[0],) + tuple(hw) + (4,)),
                        tf.float64)

  def loss():
    y = tf.cast(layer(x), tf.float64)
    if channels_first:
      y = tf.transpose(y, (0, 2, 3, 1))
    return tf.reduce_sum(weights * tf.tanh(tf.nn.conv2d(y, kernel, 1, 'SAME')))

  return loss


def _thresholds(size, stride, row):
  """t and R + t of the mask ramp; the loss has kinks where either is an int."""
  t = max(size / stride, 2.0) / 2.0 + (0.0 if row else 1.0)
  return t, _R + t


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
@pytest.mark.parametrize('shared_stride, strides', [
    (False, (2.3, 2.7)),
    (True, (2.3, 2.3)),
], ids=['per_axis', 'shared'])
def test_stride_gradient_matches_central_differences(shared_stride, strides,
                                                     data_format,
                                                     implementation):
  channels_first = data_format == 'channels_first'
  shape = (2, 3, 32, 32) if channels_first else (2, 32, 32, 3)
  x = _random(shape, seed=1)
  layer = diffstride.DiffStride(strides=strides, shared_stride=shared_stride,
                                data_format=data_format,
                                implementation=implementation)
  y = layer(x)
  loss = _loss_fn(layer, x, tuple(y.shape), channels_first)
  with tf.GradientTape() as tape:
    value = loss()
  grad = tape.gradient(value, layer.strides).numpy()
  base = layer.strides.numpy().copy()
  assert base.shape == ((1,) if shared_stride else (2,))
  np.testing.assert_allclose(base, strides[:len(base)], rtol=1e-6)

  # A stride step of eps moves t = N / (2 S) by N eps / (2 S^2) ~ 1.5 eps here;
  # with eps = 5e-3 neither t (top of the ramp) nor R + t (edge of the crop)
  # crosses an integer position, so the loss is smooth over [S - eps, S + eps]
  # (checked below via the thresholds and the output shape).
  eps = 5e-3
  for size, stride, row in ((32, strides[0], True), (32, strides[1], False)):
    lo, hi = (_thresholds(size, stride + e, row) for e in (eps, -eps))
    assert np.floor(lo[0]) == np.floor(hi[0])
    assert np.floor(lo[1]) == np.floor(hi[1])
  finite_diff = []
  for i in range(len(base)):
    step = np.zeros_like(base)
    step[i] = eps
    layer.strides.assign(base + step)
    shape_plus, loss_plus = tuple(layer(x).shape), loss().numpy()
    layer.strides.assign(base - step)
    shape_minus, loss_minus = tuple(layer(x).shape), loss().numpy()
    layer.strides.assign(base)
    assert shape_plus == shape_minus == tuple(y.shape)
    finite_diff.append((loss_plus - loss_minus) / (2 * eps))
  finite_diff = np.array(finite_diff)
  assert np.all(np.abs(grad) > 1.0), grad  # not vacuous
  # Tolerance: the layer runs in float32, so each output carries ~1e-7
  # relative noise; over ~2.5e3 outputs the loss (|loss| ~ 10..100) has noise
  # ~1e-5, i.e. ~1e-3 absolute in a difference quotient over 2 eps = 1e-2,
  # against gradients of ~10. The truncation error of central differences is
  # O(eps^2) ~ 1e-5 relative. Measured errors are ~1e-4; 3e-3 relative to the
  # largest component leaves margin while still catching a wrong factor (a
  # missing 1/R or 1/2, a wrong sign or a dropped axis is >= 50% off).
  scale = np.max(np.abs(finite_diff))
  np.testing.assert_allclose(grad, finite_diff, rtol=0, atol=3e-3 * scale)


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
def test_cropping_false_stride_gradient_matches_central_differences(
    implementation):
  x = _random((2, 32, 32, 2), seed=2)
  layer = diffstride.DiffStride(strides=(2.3, 2.7), cropping=False,
                                data_format='channels_last',
                                implementation=implementation)
  y = layer(x)
  assert tuple(y.shape) == (2, 32, 32, 2)
  loss = _loss_fn(layer, x, tuple(y.shape), False, seed=3)
  with tf.GradientTape() as tape:
    value = loss()
  grad = tape.gradient(value, layer.strides).numpy()
  base = layer.strides.numpy().copy()
  eps = 5e-3
  finite_diff = []
  for i in range(2):
    step = np.zeros_like(base)
    step[i] = eps
    layer.strides.assign(base + step)
    loss_plus = loss().numpy()
    layer.strides.assign(base - step)
    loss_minus = loss().numpy()
    layer.strides.assign(base)
    finite_diff.append((loss_plus - loss_minus) / (2 * eps))
  # Same tolerance reasoning as above.
  scale = np.max(np.abs(finite_diff))
  assert scale > 1.0
  np.testing.assert_allclose(grad, finite_diff, rtol=0, atol=3e-3 * scale)


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
@pytest.mark.parametrize('shared_stride', (False, True))
def test_stride_below_minimum_behaves_as_minimum(shared_stride,
                                                 implementation):
  # 32x32, R = 4: the minimum stride is N / (N - R) = 32 / 28.
  x = _random((2, 32, 32, 3), seed=4)
  minimum = np.float32(32.0) / np.float32(28.0)
  n = 1 if shared_stride else 2
  below = diffstride.DiffStride(strides=1.0, shared_stride=shared_stride,
                                data_format='channels_last',
                                implementation=implementation)
  at_min = diffstride.DiffStride(strides=1.0, shared_stride=shared_stride,
                                 data_format='channels_last',
                                 implementation=implementation)
  below.build(x.shape)
  at_min.build(x.shape)
  # The weight starts at the minimum; force the other one under it.
  np.testing.assert_allclose(at_min.strides.numpy(), [minimum] * n, rtol=1e-6)
  below.strides.assign([1.0] * n)
  at_min.strides.assign([minimum] * n)

  def run(layer):
    with tf.GradientTape() as tape:
      y = layer(x)
      loss = tf.reduce_sum(tf.sin(y) * tf.cos(3.0 * y))
    return y.numpy(), tape.gradient(loss, layer.strides).numpy()

  y_below, g_below = run(below)
  y_min, g_min = run(at_min)
  assert y_below.shape == y_min.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(y_below, y_min, rtol=0, atol=1e-6)
  assert np.all(np.isfinite(g_below))
  assert np.all(np.abs(g_below) > 1e-3), g_below
  np.testing.assert_allclose(g_below, g_min, rtol=1e-5)


def _push(layer, x, direction, learning_rate=10.0, steps=3):
  """SGD steps on +-sum(y^2): direction=-1 drives strides down, +1 up."""
  optimizer = keras.optimizers.SGD(learning_rate=learning_rate)
  history = []
  for _ in range(steps):
    with tf.GradientTape() as tape:
      y = layer(x)
      # More kept energy at smaller strides (d sum(y^2) / dS < 0): minimizing
      # -sum(y^2) lowers S, minimizing +sum(y^2) raises it.
      loss = direction * tf.reduce_mean(tf.square(y)) * 1e3
    grads = tape.gradient(loss, layer.trainable_weights)
    optimizer.apply_gradients(zip(grads, layer.trainable_weights))
    history.append(layer.strides.numpy().copy())
  return history


@pytest.mark.parametrize('shared_stride', (False, True))
def test_optimizer_keeps_strides_above_minimum(shared_stride):
  # 32 x 20 input: minima 32/28 (rows) and 20/16 (columns).
  x = _random((2, 32, 20, 3), seed=5)
  layer = diffstride.DiffStride(strides=(1.6, 1.6), shared_stride=shared_stride,
                                data_format='channels_last')
  layer.build(x.shape)
  min_h = np.float32(32) / np.float32(28)
  min_w = np.float32(20) / np.float32(16)
  floor = [max(min_h, min_w)] if shared_stride else [min_h, min_w]
  history = _push(layer, x, direction=-1)
  assert np.any(history[0] < 1.6), history[0]  # it did move down
  for strides in history:
    assert np.all(np.isfinite(strides))
    assert np.all(strides >= np.array(floor, np.float32) - 1e-6), strides
  # The push is strong enough to pin the weight to the floor.
  np.testing.assert_allclose(history[-1], floor, rtol=1e-6)


@pytest.mark.parametrize('direction, expected', [(-1, 1.5), (1, 3.0)],
                         ids=['down_to_lower', 'up_to_upper'])
def test_optimizer_keeps_strides_within_limits(direction, expected):
  x = _random((2, 32, 32, 3), seed=6)
  layer = diffstride.DiffStride(strides=(2.0, 2.5), lower_limit_stride=1.5,
                                upper_limit_stride=3.0,
                                data_format='channels_last')
  history = []
  layer.build(x.shape)
  history = _push(layer, x, direction=direction, learning_rate=100.0)
  for strides in history:
    assert np.all(strides >= 1.5 - 1e-6) and np.all(strides <= 3.0 + 1e-6), (
        strides)
  np.testing.assert_allclose(history[-1], [expected, expected], rtol=1e-6)


def test_optimizer_constraint_with_huge_gradient():
  """A single huge step in either direction is clipped, never overshoots."""
  x = _random((1, 32, 32, 1), seed=7)
  layer = diffstride.DiffStride(strides=(2.0, 2.0), lower_limit_stride=1.5,
                                upper_limit_stride=4.0)
  layer.build((1, 1, 32, 32))
  optimizer = keras.optimizers.SGD(learning_rate=1.0)
  optimizer.apply_gradients([(tf.constant([1e6, -1e6]), layer.strides)])
  np.testing.assert_allclose(layer.strides.numpy(), [1.5, 4.0])
  free = diffstride.DiffStride(strides=(2.0, 2.0), data_format='channels_last')
  free.build(x.shape)
  optimizer = keras.optimizers.SGD(learning_rate=1.0)
  optimizer.apply_gradients([(tf.constant([1e6, 1e6]), free.strides)])
  np.testing.assert_allclose(free.strides.numpy(), [32 / 28] * 2, rtol=1e-6)


def test_model_fit_respects_limits():
  inputs = keras.Input((32, 32, 2))
  layer = diffstride.DiffStride(strides=(2.0, 2.0), lower_limit_stride=1.8,
                                data_format='channels_last')
  outputs = layer(inputs)
  energy = keras.layers.Lambda(
      lambda y: tf.reduce_mean(tf.square(y), axis=(1, 2, 3))[:, None])(outputs)
  model = keras.Model(inputs, energy)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=100.0),
                loss=lambda y_true, y_pred: -y_pred * 1e3)
  x = np.random.default_rng(8).standard_normal((4, 32, 32, 2)).astype('f4')
  model.fit(x, np.zeros((4, 1), 'f4'), epochs=2, batch_size=4, verbose=0)
  np.testing.assert_allclose(layer.strides.numpy(), [1.8, 1.8], rtol=1e-6)


def test_not_trainable():
  x = _random((2, 32, 32, 3), seed=9)
  layer = diffstride.DiffStride(strides=(2.0, 2.0), trainable=False,
                                data_format='channels_last')
  inputs = keras.Input((32, 32, 3))
  y = layer(inputs)
  y = keras.layers.Conv2D(2, 3)(y)
  model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(y))
  assert not any(w is layer.strides for w in layer.trainable_weights)
  assert not any(w is layer.strides for w in model.trainable_weights)
  assert any(w is layer.strides for w in model.non_trainable_weights)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=10.0), loss='mse')
  model.fit(x, np.ones((2, 2), 'f4'), epochs=2, verbose=0)
  np.testing.assert_array_equal(layer.strides.numpy(), [2.0, 2.0])


def test_fixed_spectral_pooling_has_no_trainable_weights():
  layer = diffstride.FixedSpectralPooling(strides=(2.0, 3.0))
  layer(_random((1, 2, 16, 16), seed=10))
  assert not layer.trainable_weights


_LINEAR_LAYERS = [
    ('DiffStride', lambda impl: diffstride.DiffStride(
        strides=(2.3, 1.7), data_format='channels_last', implementation=impl)),
    ('DiffStride_shared_cf', lambda impl: diffstride.DiffStride(
        strides=2.5, shared_stride=True, data_format='channels_first',
        implementation=impl)),
    ('DiffStride_nocrop', lambda impl: diffstride.DiffStride(
        strides=(3.0, 2.0), cropping=False, data_format='channels_last',
        implementation=impl)),
    ('FixedSpectralPooling', lambda impl: diffstride.FixedSpectralPooling(
        strides=(1.5, 2.5), data_format='channels_last', implementation=impl)),
]


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
@pytest.mark.parametrize('make', [m for _, m in _LINEAR_LAYERS],
                         ids=[n for n, _ in _LINEAR_LAYERS])
def test_linear_in_x_and_gradient_is_adjoint(make, implementation):
  layer = make(implementation)
  channels_first = layer.data_format == 'channels_first'
  shape = (2, 3, 24, 18) if channels_first else (2, 24, 18, 3)
  x1, x2 = _random(shape, seed=11), _random(shape, seed=12)
  a, b = 0.7, -1.9
  y1, y2 = layer(x1), layer(x2)
  y12 = layer(a * x1 + b * x2)
  # float32: outputs are O(1), sums of O(H W) terms; 1e-5 absolute is ~100 ulp.
  scale = np.max(np.abs(y12))
  np.testing.assert_allclose(y12, a * y1 + b * y2, rtol=0, atol=1e-5 * scale)

  # <L x, v> == <x, L^T v> with L^T v from the gradient of <L x, v> in x.
  v = _random(tuple(y1.shape), seed=13)
  with tf.GradientTape() as tape:
    tape.watch(x1)
    inner = tf.reduce_sum(layer(x1) * v)
  adjoint_v = tape.gradient(inner, x1)
  assert adjoint_v.shape == x1.shape
  lhs = np.sum(y1.numpy().astype(np.float64) * v.numpy())
  rhs = np.sum(x1.numpy().astype(np.float64) * adjoint_v.numpy())
  # Both are sums of ~2.5e3 float32 products of O(1) values whose magnitude is
  # ~sqrt(2.5e3) = 50: 1e-5 of the terms' total size is ~300x float32 epsilon.
  total = np.sum(np.abs(y1.numpy() * v.numpy()))
  assert abs(lhs - rhs) < 1e-5 * total, (lhs, rhs)
  # The adjoint must not be trivially zero.
  assert np.max(np.abs(adjoint_v)) > 1e-2


def _official_numpy(x, strides, smoothness, cropping):
  """The official DiffStride forward and stride gradient, in float64 numpy.

  x: [B, H, W, C]. The stride gradient uses the official convention: the mask
  is tf.clip_by_value((R + t - n) / R, 0, 1), whose gradient in t is 1/R on
  the closed ramp 0 <= value <= 1 (fixture case0, where t is an integer,
  pins this convention). d loss / d mask comes from float64 central
  differences (the output is linear in each mask entry, so they are exact up
  to ~1e-9 here).
  """
  from diffstride import masks  # only for the official row layout

  _, height, width, _ = x.shape
  spectrum = np.fft.rfft2(np.transpose(x.astype(np.float64), (0, 3, 1, 2)))
  # Thresholds and ramps in float32 and in the official order of operations,
  # so that which entries are exactly 0 or 1 (crop and gradient support) is
  # decided as in the official layer; the rest runs in float64.
  f32 = np.float32
  r = f32(smoothness)
  s_h = max(f32(strides[0]), f32(height) / (f32(height) - r))
  s_w = max(f32(strides[1]), f32(width) / (f32(width) - r))
  t_h = max(f32(height) / s_h, f32(2.0)) / f32(2.0)
  t_w = max(f32(width) / s_w, f32(2.0)) / f32(2.0) + f32(1.0)
  ramp_h = (f32(1.0) / r) * (r + t_h - masks.row_positions(height))
  ramp_w = (f32(1.0) / r) * (r + t_w - np.arange(width // 2 + 1, dtype=f32))
  assert ramp_h.dtype == ramp_w.dtype == np.float32
  mask_h = np.clip(ramp_h, 0, 1).astype(np.float64)
  mask_w = np.clip(ramp_w, 0, 1).astype(np.float64)
  r, s_h, s_w = float(r), float(s_h), float(s_w)
  rows = np.where(mask_h > 0)[0] if cropping else np.arange(height)
  cols = int(np.sum(mask_w > 0)) if cropping else width // 2 + 1

  def forward(m_h, m_w):
    z = spectrum[:, :, rows, :cols] * m_h[rows][:, None] * m_w[:cols][None, :]
    return np.fft.irfft2(z, s=(len(rows), 2 * (cols - 1)))

  def loss(m_h, m_w):
    y = forward(m_h, m_w)
    return np.sum(np.sin(y) * np.cos(2.0 * y))

  def d_stride(axis, ramp, size, stride):
    if size / stride < 2.0:
      return 0.0
    total = 0.0
    for k in np.where((ramp >= 0) & (ramp <= 1))[0]:
      masks = [mask_h.copy(), mask_w.copy()]
      masks[axis][k] += 1e-6
      plus = loss(*masks)
      masks[axis][k] -= 2e-6
      total += (plus - loss(*masks)) / 2e-6
    # d mask / d t = 1 / R on the ramp; t = size / (2 S): dt/dS = -size/(2S^2)
    return total / r * (-size / (2.0 * stride**2))

  grads = np.array([d_stride(0, ramp_h, height, s_h),
                    d_stride(1, ramp_w, width, s_w)])
  return np.transpose(forward(mask_h, mask_w), (0, 2, 3, 1)), grads


_NUMPY_CASES = [
    # (H, W, strides, smoothness_factor, cropping); the last three are odd
    # heights at R=1 where every kept mask value is 1 (a band edge case).
    (32, 32, (2.0, 2.0), 4.0, True),  # integer t: closed ramp matters
    (32, 32, (2.3, 2.7), 4.0, True),
    (31, 17, (1.5, 2.7), 4.0, True),
    (17, 32, (1.0, 1.0), 2.0, True),  # odd H at its minimum stride
    (33, 21, (2.5, 1.0), 1.0, True),
    (24, 24, (3.0, 3.0), 2.0, False),
    (33, 33, (1.0, 1.0), 1.0, True),
    (31, 17, (1.0, 1.8), 1.0, True),
    (33, 33, (1.0, 1.0), 1.0, False),
]


def _numpy_params():
  params = []
  for case in _NUMPY_CASES:
    h, w, strides, r, cropping = case
    name = f'{h}x{w}_s{strides[0]}-{strides[1]}_R{r}' + (
        '' if cropping else '_nocrop')
    for implementation in _IMPLEMENTATIONS:
      params.append(pytest.param(case, implementation,
                                 id=f'{name}-{implementation}'))
  return params


@pytest.mark.parametrize('case, implementation', _numpy_params())
def test_matches_numpy_official_formula(case, implementation):
  height, width, strides, smoothness, cropping = case
  x = _random((1, height, width, 2), seed=height * width).numpy()
  expected_y, expected_grad = _official_numpy(x, strides, smoothness,
                                              cropping)
  layer = diffstride.DiffStride(strides=strides, smoothness_factor=smoothness,
                                cropping=cropping, data_format='channels_last',
                                implementation=implementation)
  with tf.GradientTape() as tape:
    y = layer(tf.constant(x))
    loss = tf.reduce_sum(tf.sin(y) * tf.cos(2.0 * y))
  grad = tape.gradient(loss, layer.strides).numpy()
  assert y.shape == expected_y.shape
  # float32 layer against float64 maths: as in reference_test, 1e-4 of the
  # largest value is ~100x float32 noise and far below a real mistake.
  np.testing.assert_allclose(y, expected_y, rtol=0,
                             atol=1e-4 * np.max(np.abs(expected_y)))
  np.testing.assert_allclose(grad, expected_grad, rtol=0,
                             atol=1e-4 * np.max(np.abs(expected_grad)) + 1e-4)
