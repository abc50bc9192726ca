"""The two implementations of spectral cropping agree everywhere.

`implementation='fft'` is the official algorithm with `keras.ops` FFTs (also
checked against the official fixtures in reference_test.py); the default
matmul path factors the same operator into small real matrices and has a
hand-made gradient (`diffstride.crop.spectral_crop`). These tests sweep sizes (odd
and even), strides (including those that put the ramp threshold on an integer,
where the clip's gradient is taken at a mask value of exactly 1) and options, and compare outputs, input
gradients and stride gradients. They also check `diffstride_output_size`.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from diffstride import pooling
from diffstride import masks

SIZES = [(32, 32), (31, 17), (24, 20), (9, 13), (16, 16), (64, 48)]
STRIDES = [(1.0, 1.0), (2.0, 2.0), (2.0, 4.0), (1.5, 2.7), (3.0, 1.3),
           (8.0, 8.0), (4.0, 16.0)]


def _run(layer, x, dy):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x)
  dx, ds = tape.gradient(y, [x, layer.strides], output_gradients=dy)
  return y.numpy(), dx.numpy(), ds.numpy()


def _rel(a, b):
  scale = max(np.max(np.abs(b)), 1e-6)
  return np.max(np.abs(a - b)) / scale


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('options', [
    dict(),
    dict(smoothness_factor=2.0),
    dict(cropping=False),
    dict(shared_stride=True),
])
def test_matmul_path_equals_fft_path(size, options):
  rng = np.random.default_rng(0)
  height, width = size
  x = tf.constant(rng.normal(size=(2, height, width, 3)), tf.float32)
  worst = 0.0
  for strides in STRIDES:
    if options.get('shared_stride'):
      strides = (strides[0], strides[0])
    kwargs = dict(strides=strides, data_format='channels_last', **options)
    fft = pooling.DiffStride(implementation='fft', **kwargs)
    mat = pooling.DiffStride(implementation='matmul', **kwargs)
    y_fft = fft(x)
    mat(x)
    assert y_fft.shape == mat(x).shape
    dy = tf.constant(rng.normal(size=y_fft.shape), tf.float32)
    ref = _run(fft, x, dy)
    got = _run(mat, x, dy)
    for name, a, b in zip(('y', 'dx', 'dstrides'), got, ref):
      err = _rel(a, b)
      worst = max(worst, err)
      assert err < 1e-4, (name, strides, err)
  assert worst > 0.0  # The two paths are genuinely different computations.


@pytest.mark.parametrize('data_format', ['channels_first', 'channels_last'])
def test_both_data_formats_same_numbers(data_format):
  rng = np.random.default_rng(1)
  x_nhwc = rng.normal(size=(2, 20, 28, 5)).astype(np.float32)
  x = x_nhwc if data_format == 'channels_last' else x_nhwc.transpose(0, 3, 1, 2)
  layer = pooling.DiffStride(strides=(2.5, 3.0), data_format=data_format)
  ref = pooling.DiffStride(strides=(2.5, 3.0), data_format='channels_last',
                           implementation='fft')
  y = layer(x).numpy()
  if data_format == 'channels_first':
    y = y.transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, ref(x_nhwc).numpy(), atol=1e-5)


def test_fixed_spectral_pooling_paths_agree():
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(size=(2, 33, 30, 3)), tf.float32)
  for strides in [(2.0, 2.0), (3.0, 1.5), (1.0, 7.0)]:
    a = pooling.FixedSpectralPooling(strides, 'channels_last', 'fft')(x)
    b = pooling.FixedSpectralPooling(strides, 'channels_last', 'matmul')(x)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_output_size_matches_layer():
  for (height, width), strides, r in itertools.product(
      SIZES, STRIDES, (4.0, 2.0)):
    layer = pooling.DiffStride(strides=strides, smoothness_factor=r,
                               data_format='channels_last')
    y = layer(np.zeros((1, height, width, 1), np.float32))
    assert tuple(y.shape[1:3]) == pooling.diffstride_output_size(
        height, width, strides, r), (height, width, strides, r)
  assert pooling.diffstride_output_size(64, 64, (2, 4)) == (40, 24)
  assert pooling.diffstride_output_size(32, 32, 2) == (24, 24)


def test_host_and_tensor_formulas_keep_the_same_frequencies():
  """The host numerics (output sizes) and the tensor numerics (mask values)
  run the same formulas in the same float32 order: the kept frequencies are
  exactly the positions where the layer's mask is > 0, including strides
  whose threshold falls on a position."""
  for size, stride, r in itertools.product(
      (5, 16, 31, 64), (1.0, 1.3, 2.0, 2.5, 3.0, 4.0, 16.0 / 3.0), (4.0, 2.0)):
    if size <= r:
      continue
    for offset, positions in ((0, masks.row_positions(size)),
                              (1, masks.column_positions(size))):
      (host_s,) = masks.effective_strides([np.float32(stride)], (size,), r,
                                          False, numerics=masks.HOST)
      t_host = masks.threshold(size, host_s, offset, masks.HOST)
      (s,) = masks.effective_strides(tf.constant([stride], tf.float32),
                                     (size,), r, False)
      t = masks.threshold(size, s, offset)
      assert np.float32(t.numpy()) == t_host
      values = masks.mask(t, r, positions).numpy()
      assert masks.kept(t_host, r, positions) == tuple(
          np.nonzero(values > 0)[0]), (size, stride, r, offset)


@pytest.mark.parametrize('implementation', ['matmul', 'fft'])
def test_graph_sizes_found_at_run_time_equal_eager(implementation):
  """In a tf.function without XLA the sizes come from the strides when the
  graph runs: same outputs and gradients as eager, and a stride change
  between two calls of the same graph changes the output size."""
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=(2, 24, 20, 3)), tf.float32)
  layer = pooling.DiffStride(strides=(2.0, 2.5), data_format='channels_last',
                             implementation=implementation)

  @tf.function(jit_compile=False)
  def step(x):
    with tf.GradientTape() as tape:
      y = layer(x)
      loss = tf.reduce_sum(y * y)
    return y, tape.gradient(loss, layer.strides)

  y_graph, ds_graph = step(x)
  with tf.GradientTape() as tape:
    y = layer(x)
    loss = tf.reduce_sum(y * y)
  np.testing.assert_allclose(y_graph.numpy(), y.numpy(), atol=1e-5)
  np.testing.assert_allclose(ds_graph.numpy(),
                             tape.gradient(loss, layer.strides).numpy(),
                             rtol=1e-4)
  layer.strides.assign([3.0, 4.0])
  y_graph, _ = step(x)
  assert tuple(y_graph.shape[1:3]) == pooling.diffstride_output_size(
      24, 20, (3.0, 4.0)) != tuple(y.shape[1:3])


def test_output_size_rejects_maps_too_small():
  with pytest.raises(ValueError, match='height'):
    pooling.diffstride_output_size(4, 32, 2.0)
  with pytest.raises(ValueError, match='width'):
    pooling.diffstride_output_size(32, 2, 2.0, smoothness_factor=2.0)
