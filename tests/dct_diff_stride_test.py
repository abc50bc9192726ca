"""DCT-DiffStride on TensorFlow: sizes, argument errors, the stride's gradient,
run-time sizes, the registry, the complexity penalty and the export.

Its numbers against scipy and the standard layer checks on every backend are
in tests/backend_cases.py (`test_reference_dct_diffstride`, `dct_diffstride_*`
cases of `test_layer_standard_checks`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride
from diffstride import complexity
from diffstride import export
from diffstride import methods
from diffstride import resnet
from diffstride import stages

import reference_algorithms  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order


def _x(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype('f4')


@pytest.mark.parametrize('dims, strides, expected', [
    ((32, 32), 2.0, (20, 20)),          # N / S + R
    ((64, 64), (2.0, 4.0), (36, 20)),
    ((15, 16), (2.3, 1.7), (11, 14)),   # ceil(N / S + R)
    ((9, 20), (1.0, 3.7), (9, 10)),     # raised to 9 / 5: every bin
    ((12, 40), (1.0, 40.0), (12, 6)),   # t = max(N / S, 2): 2 + R bins
])
def test_output_size(dims, strides, expected):
  assert diffstride.dct_diffstride_output_size(*dims, strides) == expected
  layer = diffstride.DCTDiffStride(strides, data_format='channels_last')
  assert tuple(layer(_x((1,) + dims + (1,))).shape[1:3]) == expected
  assert layer.output_size(dims) == expected
  assert layer.output_size_at(dims, strides) == expected
  uncropped = diffstride.DCTDiffStride(strides, cropping=False,
                                       data_format='channels_last')
  assert tuple(uncropped(_x((1,) + dims + (1,))).shape[1:3]) == dims


@pytest.mark.parametrize('kwargs, argument', [
    (dict(strides=0.5), '`strides`'),
    (dict(strides=(2.0, 'a')), '`strides`'),
    (dict(smoothness_factor=0.0), '`smoothness_factor`'),
    (dict(data_format='NHWC'), '`data_format`'),
    (dict(implementation='fft'), '`implementation`'),
    (dict(strides=(2.0, 3.0), shared_stride=True), '`shared_stride'),
    (dict(lower_limit_stride=3.0, upper_limit_stride=2.0),
     '`lower_limit_stride`'),
])
def test_bad_arguments_fail_at_construction(kwargs, argument):
  with pytest.raises(ValueError, match=argument):
    diffstride.DCTDiffStride(**kwargs)


def test_input_smaller_than_the_ramp_fails_at_build():
  layer = diffstride.DCTDiffStride(smoothness_factor=4.0,
                                   data_format='channels_last')
  with pytest.raises(ValueError, match='DCTDiffStride input height 4 is too '
                     'small for smoothness_factor'):
    layer.build((1, 4, 16, 1))


def test_masks_start_at_frequency_zero_and_give_the_size():
  layer = diffstride.DCTDiffStride((2.3, 1.7), data_format='channels_last')
  layer.build((1, 15, 16, 1))
  row, col = (np.asarray(m) for m in layer.masks(15, 16))
  assert row.shape == (15,) and col.shape == (16,)
  for mask, kept in zip((row, col), (11, 14)):
    assert mask[0] == 1.0
    assert np.all(np.diff(mask) <= 0)
    assert np.sum(mask > 0) == kept
    assert 0.0 < mask[kept - 1] < 1.0  # The ramp's last kept bin.


def test_constant_map_is_scaled_by_the_orthonormal_crop():
  """Orthonormal DCT-II and DCT-III: c becomes c sqrt(H W / (h' w'))."""
  layer = diffstride.DCTDiffStride(2.0, data_format='channels_last')
  y = layer(np.full((1, 32, 24, 1), 3.0, 'f4')).numpy()
  assert y.shape == (1, 20, 16, 1)
  np.testing.assert_allclose(y, 3.0 * np.sqrt(32 * 24 / (20 * 16)),
                             rtol=1e-5)


def test_stride_gradient_lowers_the_energy():
  """A larger stride attenuates the ramp's bins: d sum(y^2) / dS < 0 on both
  axes, equal to a finite difference (sizes unchanged by the step)."""
  x = _x((2, 15, 16, 3))
  layer = diffstride.DCTDiffStride((2.3, 1.7), data_format='channels_last')
  layer.build(x.shape)
  with tf.GradientTape() as tape:
    energy = tf.reduce_sum(tf.square(layer(x)))
  grad = tape.gradient(energy, layer.strides).numpy()
  assert np.all(grad < 0), grad
  for axis in range(2):
    step = np.zeros(2, 'f4')
    step[axis] = 1e-3
    values = []
    for sign in (1, -1):
      layer.strides.assign(np.array([2.3, 1.7], 'f4') + sign * step)
      values.append(float(tf.reduce_sum(tf.square(
          tf.cast(layer(x), tf.float64)))))
    numeric = (values[0] - values[1]) / 2e-3
    np.testing.assert_allclose(grad[axis], numeric, rtol=2e-2)


def test_run_time_sizes_in_a_graph_without_xla():
  """tf.function without XLA: the sizes come from the strides when the
  graph runs (the DCT operands computed on the host), so one trace follows
  the strides."""
  x = _x((2, 15, 16, 3))
  layer = diffstride.DCTDiffStride((2.3, 1.7), data_format='channels_last')
  layer.build(x.shape)
  fn = tf.function(layer)
  for strides in ((2.3, 1.7), (3.1, 2.6)):
    layer.strides.assign(strides)
    got = fn(tf.constant(x)).numpy()
    expected = reference_algorithms.dct_diffstride(x, strides)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
  assert len(fn._list_all_concrete_functions()) == 1  # pylint: disable=protected-access


def _dct_resnet():
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([4, 4, 8], [1, 1, 2], num_output_classes=3,
                        id_only=[0], num_layers=1, kernel_size=3,
                        channels_first=False, pooling_cls='DCTDiffStride')
  model.build((None, 16, 16, 3))
  return model


def test_registry_stages_and_complexity_penalty():
  model = _dct_resnet()
  assert model.pooling_cls is diffstride.DCTDiffStride
  assert model.get_config()['pooling_cls'] == 'DCTDiffStride'
  layers = methods.diffstride_layers(model)
  assert len(layers) == 2
  assert all(isinstance(l, diffstride.DCTDiffStride) for l in layers)
  assert methods.for_layer(layers[0]) is methods.DCT_DIFFSTRIDE
  assert methods.for_layer(diffstride.DiffStride()) is methods.DIFFSTRIDE
  assert methods.get('dct_diffstride').learns_strides
  assert set(methods.learned_strides(model)) == {l.name for l in layers}
  # The map sizes the stages report are the layers' real outputs.
  x = _x((1, 16, 16, 3))
  sizes = [out for _, _, out in stages.downsampling_sizes(model, (16, 16))]
  assert sizes == [diffstride.dct_diffstride_output_size(16, 16, 1.0),
                   diffstride.dct_diffstride_output_size(16, 16, 2.0)]
  model(x)
  # The paper's penalty, differentiable in every stride.
  layers[1].strides.assign([2.0, 2.5])
  with tf.GradientTape() as tape:
    penalty = complexity.complexity_penalty(model)
  s0 = layers[0].strides.numpy()
  expected = 1 / np.prod(s0) + 1 / (np.prod(s0) * 5.0)
  np.testing.assert_allclose(penalty.numpy(), expected, rtol=1e-6)
  grads = tape.gradient(penalty, [l.strides for l in layers])
  assert all(np.all(g.numpy() < 0) for g in grads)


def test_export_frozen_equals_the_source_and_fixed_spectral_is_refused():
  model = _dct_resnet()
  layers = methods.diffstride_layers(model)
  layers[1].strides.assign([2.4, 1.6])  # As if trained.
  x = _x((2, 16, 16, 3), seed=1)
  expected = model(x, training=False).numpy()
  assert export.modes_for(model) == ('frozen', 'strided_conv')
  frozen = export.export_model(model, 'frozen', (16, 16))
  assert frozen.pooling_cls is diffstride.DCTDiffStride
  assert frozen.block_strides[2] == pytest.approx((2.4, 1.6))
  frozen_layers = methods.diffstride_layers(frozen)
  assert not any(l.trainable or l.trainable_weights for l in frozen_layers)
  np.testing.assert_array_equal(frozen(x, training=False).numpy(), expected)
  conv = export.export_model(model, 'strided_conv', (16, 16))
  assert conv.pooling_cls is None and conv.block_strides[2] == (2, 2)
  with pytest.raises(ValueError, match='DCT-DiffStride network'):
    export.export_model(model, 'fixed_spectral', (16, 16))


def test_xla_with_stale_sizes_gives_nan():
  """Under XLA the sizes come from the host copy (`update_sizes`); strides
  that give another size make the traced function's output NaN (XLA cannot
  raise), as for DiffStride."""
  x = _x((1, 15, 16, 2))
  layer = diffstride.DCTDiffStride((2.3, 1.7), data_format='channels_last')
  layer.build(x.shape)
  diffstride.update_sizes(layer)
  fn = tf.function(layer, jit_compile=True)
  good = fn(tf.constant(x)).numpy()
  np.testing.assert_allclose(
      good, reference_algorithms.dct_diffstride(x, (2.3, 1.7)), rtol=1e-5,
      atol=1e-5 * np.abs(good).max())
  layer.strides.assign([3.1, 1.7])  # 9 rows instead of 11.
  assert np.all(np.isnan(fn(tf.constant(x)).numpy()))
