"""Tests of diffstride.recalibration (BatchNorm statistics recalibration)."""

import os
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride
from diffstride import recalibration
from diffstride.recalibration import BatchNormRecalibration
from diffstride.recalibration import recalibrate_batch_norm

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

_EPS = 1e-3
_BN = keras.layers.BatchNormalization


def _bn_layers(model):
  return [l for l in recalibration._all_layers(model) if isinstance(l, _BN)]


def _randomize_bn(model, seed=0):
  """Gamma, beta and moving statistics far from their initial values."""
  rng = np.random.default_rng(seed)
  for bn in _bn_layers(model):
    c = bn.moving_mean.shape[0]
    if bn.scale:
      bn.gamma.assign(rng.uniform(0.5, 2.0, c).astype('float32'))
    if bn.center:
      bn.beta.assign(rng.normal(size=c).astype('float32'))
    bn.moving_mean.assign(rng.normal(size=c).astype('float32'))
    bn.moving_variance.assign(rng.uniform(0.1, 5.0, c).astype('float32'))


def _scramble_moving_statistics(model, seed):
  """New moving statistics only (gamma and beta stay)."""
  rng = np.random.default_rng(seed)
  for bn in _bn_layers(model):
    c = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.normal(size=c).astype('float32'))
    bn.moving_variance.assign(rng.uniform(0.1, 5.0, c).astype('float32'))


def _small_model(input_shape=(16, 16, 3), seed=0, momentum=0.9):
  """Conv-BN-ReLU-DiffStride-Conv-BN-GAP-Dense; returns (model, layers)."""
  keras.utils.set_random_seed(seed)
  conv1 = keras.layers.Conv2D(4, 3, padding='same', name='conv1')
  bn1 = _BN(momentum=momentum, epsilon=_EPS, name='bn1')
  pool = diffstride.DiffStride(strides=(2.0, 2.5),
                               data_format='channels_last', name='pool')
  conv2 = keras.layers.Conv2D(5, 3, padding='same', name='conv2')
  bn2 = _BN(momentum=momentum, epsilon=_EPS, name='bn2')
  dense = keras.layers.Dense(3, name='dense')
  inputs = keras.Input(input_shape)
  y = keras.layers.ReLU()(bn1(conv1(inputs)))
  y = bn2(conv2(pool(y)))
  y = dense(keras.layers.GlobalAveragePooling2D()(y))
  model = keras.Model(inputs, y)
  _randomize_bn(model, seed)
  return model, dict(conv1=conv1, bn1=bn1, pool=pool, conv2=conv2, bn2=bn2)


def _images(n=70, shape=(16, 16, 3), seed=0):
  rng = np.random.default_rng(seed)
  return (2.0 * rng.standard_normal((n,) + shape) + 0.5).astype('float32')


def _np_moments(a, axis=-1):
  """Batch mean and biased variance over all axes but `axis`, in float64."""
  a = np.asarray(a, np.float64)
  axes = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
  return a.mean(axis=axes), a.var(axis=axes)


def _np_batch_norm(a, mean, var, bn):
  """Training-mode BN in numpy (channels last), float64."""
  a = np.asarray(a, np.float64)
  return ((a - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy()
          + bn.beta.numpy())


def _numpy_statistics(layers, batches):
  """The reference: per-batch moments, BN with batch stats, equal-weight mean.

  Layer inputs come from the model's own Conv2D and DiffStride layers; the
  moments, the batch normalisation, the ReLU and the averaging are numpy.
  """
  stats = {'bn1': [], 'bn2': []}
  for x in batches:
    a1 = layers['conv1'](x).numpy()
    m1, v1 = _np_moments(a1)
    stats['bn1'].append((m1, v1))
    h = np.maximum(_np_batch_norm(a1, m1, v1, layers['bn1']), 0.0)
    a2 = layers['conv2'](layers['pool'](h.astype('float32'))).numpy()
    stats['bn2'].append(_np_moments(a2))
  return {name: (np.mean([m for m, _ in s], axis=0),
                 np.mean([v for _, v in s], axis=0))
          for name, s in stats.items()}


def _stats(model):
  return [(bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy())
          for bn in _bn_layers(model)]


def _assert_stats_close(a, b, rtol=1e-6, atol=1e-6):
  assert len(a) == len(b)
  for (ma, va), (mb, vb) in zip(a, b):
    np.testing.assert_allclose(ma, mb, rtol=rtol, atol=atol)
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=atol)


# ------------------------------------------------------------ definition


def test_statistics_equal_numpy_computation():
  model, layers = _small_model()
  x = _images(70)
  before = _stats(model)
  result = recalibrate_batch_norm(model, x, batch_size=16)
  # 70 examples in batches of 16: 4 full batches, the last 6 dropped.
  assert result.num_batches == 4
  assert result.num_examples == 64
  assert result.layers == ('bn1', 'bn2')
  expected = _numpy_statistics(layers, [x[i:i + 16] for i in range(0, 64, 16)])
  for name in ('bn1', 'bn2'):
    bn = layers[name]
    assert bn.moving_mean.dtype == 'float32'
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected[name][0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected[name][1],
                               rtol=1e-5, atol=1e-6)
  # The statistics did change (the check above is not vacuous) ...
  assert not np.allclose(before[1][0], layers['bn2'].moving_mean.numpy())
  # ... and are an average of per-batch biased variances, not the variance
  # pooled over all 64 examples (which adds the spread of the batch means).
  a1 = layers['conv1'](x[:64]).numpy()
  _, pooled = _np_moments(a1)
  assert np.all(layers['bn1'].moving_variance.numpy() < pooled)


def test_statistics_are_not_an_ema():
  """Equal weights: the order of the batches does not matter."""
  model, _ = _small_model()
  x = _images(64)
  recalibrate_batch_norm(model, x, batch_size=16)
  forward = _stats(model)
  reordered = np.concatenate([x[48:], x[32:48], x[16:32], x[:16]])
  recalibrate_batch_norm(model, reordered, batch_size=16)
  _assert_stats_close(forward, _stats(model), rtol=1e-5)


def test_repeated_calls_reuse_the_traced_function():
  model, layers = _small_model()
  x = _images(64)
  recalibrate_batch_norm(model, x, batch_size=16)
  forward = recalibration._FORWARD_CACHE[model][1]
  traces = forward.experimental_get_tracing_count()
  recalibrate_batch_norm(model, x, batch_size=16)
  assert recalibration._FORWARD_CACHE[model][1] is forward
  assert forward.experimental_get_tracing_count() == traces
  # A new BN configuration (baked into the trace) gives a new function, and
  # the statistics follow it: bn2's input depends on bn1's epsilon.
  layers['bn1'].epsilon = 0.5
  recalibrate_batch_norm(model, x, batch_size=16)
  assert recalibration._FORWARD_CACHE[model][1] is not forward
  expected = _numpy_statistics(layers, [x[i:i + 16] for i in range(0, 64, 16)])
  np.testing.assert_allclose(layers['bn2'].moving_variance.numpy(),
                             expected['bn2'][1], rtol=1e-5)


def test_channel_axis_other_than_last():
  """BN over axis 1 of [B, C, L] features, with and without center/scale."""
  keras.utils.set_random_seed(1)
  inputs = keras.Input((6, 5))
  dense = keras.layers.Dense(5)
  bn_a = _BN(axis=1, name='a')
  bn_b = _BN(axis=1, center=False, scale=False, name='b')
  mid = bn_a(dense(inputs))
  model = keras.Model(inputs, bn_b(mid * 2.0))
  _randomize_bn(model)
  x = np.random.default_rng(1).normal(2.0, 3.0, (40, 6, 5)).astype('float32')
  recalibrate_batch_norm(model, x, batch_size=20)
  ref_a, ref_b = [], []
  for i in (0, 20):
    d = dense(x[i:i + 20]).numpy()
    m, v = _np_moments(d, axis=1)
    ref_a.append((m, v))
    normed = ((d - m[:, None]) / np.sqrt(v[:, None] + bn_a.epsilon)
              * bn_a.gamma.numpy()[:, None] + bn_a.beta.numpy()[:, None])
    ref_b.append(_np_moments(2.0 * normed, axis=1))
  for bn, ref in ((bn_a, ref_a), (bn_b, ref_b)):
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               np.mean([m for m, _ in ref], 0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               np.mean([v for _, v in ref], 0), rtol=1e-5)


def test_hook_computes_what_batch_norm_computes_in_training_mode():
  """The temporary call: BN(training=True)'s output, without the EMA update."""
  bn = _BN(momentum=0.8)
  x = tf.constant(_images(8, (5, 5, 4)))
  bn.build(x.shape)
  _randomize_bn(bn, seed=3)
  stats = (bn.moving_mean.numpy(), bn.moving_variance.numpy())
  records = []
  hooked = recalibration._batch_statistics_call(bn, 7, records)(x)
  assert (bn.moving_mean.numpy() == stats[0]).all()
  assert (bn.moving_variance.numpy() == stats[1]).all()
  reference = bn(x, training=True)
  np.testing.assert_array_equal(hooked.numpy(), reference.numpy())
  (index, mean, variance), = records
  assert index == 7
  expected = keras.ops.moments(x, axes=[0, 1, 2])
  np.testing.assert_array_equal(mean.numpy(), expected[0].numpy())
  np.testing.assert_array_equal(variance.numpy(), expected[1].numpy())
  # ... what the layer's own EMA update used.
  np.testing.assert_allclose(bn.moving_mean.numpy(),
                             0.8 * stats[0] + 0.2 * mean.numpy(), rtol=1e-6)


# --------------------------------------------------------- nothing else


def _snapshot(model):
  """Everything but the moving statistics, as bytes, plus layer attributes."""
  moving = {id(bn.moving_mean) for bn in _bn_layers(model)}
  moving |= {id(bn.moving_variance) for bn in _bn_layers(model)}
  weights = [(v.path, v.numpy().tobytes()) for v in model.weights
             if id(v) not in moving]
  optimizer = [(v.path, v.numpy().tobytes())
               for v in model.optimizer.variables]
  layers = [(l.name, l.trainable, getattr(l, 'momentum', None),
             'call' in vars(l))
            for l in recalibration._all_layers(model)]
  return weights, optimizer, layers


def test_leaves_everything_else_unchanged():
  model, layers = _small_model()
  layers['bn2'].trainable = False
  layers['bn1'].momentum = 0.77
  model.compile(optimizer=keras.optimizers.Adam(0.01), loss='mse')
  x = _images(32)
  model.fit(x, np.ones((32, 3), 'float32'), batch_size=16, epochs=1,
            verbose=0)
  assert int(model.optimizer.iterations.numpy()) == 2
  strides = layers['pool'].strides.numpy().copy()
  assert not np.allclose(strides, [2.0, 2.5])  # They were trained.
  before = _snapshot(model)
  stats_before = _stats(model)
  result = recalibrate_batch_norm(model, x, batch_size=16)
  assert _snapshot(model) == before
  np.testing.assert_array_equal(layers['pool'].strides.numpy(), strides)
  assert int(model.optimizer.iterations.numpy()) == 2
  assert layers['bn1'].momentum == 0.77
  assert layers['bn2'].trainable is False
  # A trainable=False BN is recalibrated as well.
  assert result.layers == ('bn1', 'bn2')
  assert not np.allclose(_stats(model)[1][0], stats_before[1][0])
  # The model still trains and predicts normally (no hook left behind).
  model.fit(x, np.ones((32, 3), 'float32'), batch_size=16, epochs=1,
            verbose=0)
  assert int(model.optimizer.iterations.numpy()) == 4


def test_error_during_forward_pass_changes_nothing():
  model, layers = _small_model()
  x = _images(32)
  before = _stats(model)

  def failing():
    yield x[:16]
    raise RuntimeError('data source broke')

  with pytest.raises(RuntimeError, match='data source broke'):
    recalibrate_batch_norm(model, failing())
  _assert_stats_close(_stats(model), before, rtol=0, atol=0)
  assert 'call' not in vars(layers['bn1'])
  assert 'call' not in vars(layers['bn2'])
  # Inference mode uses the (unchanged) moving statistics again.
  out = model(x[:4], training=False)
  model_copy, _ = _small_model()
  np.testing.assert_array_equal(out.numpy(), model_copy(x[:4]).numpy())


# ---------------------------------------------------------- data kinds


class _Batches(keras.utils.PyDataset):

  def __init__(self, x, y, batch_size):
    super().__init__()
    self.x, self.y, self.batch_size = x, y, batch_size

  def __len__(self):
    return len(self.x) // self.batch_size

  def __getitem__(self, i):
    s = slice(i * self.batch_size, (i + 1) * self.batch_size)
    return self.x[s], self.y[s]


def test_data_kinds_give_the_same_statistics():
  model, _ = _small_model()
  x = _images(64)
  y = np.arange(64) % 3
  w = np.ones(64, 'float32')
  recalibrate_batch_norm(model, x, batch_size=16)
  reference = _stats(model)

  def generator():
    for i in range(0, 64, 16):
      yield x[i:i + 16], y[i:i + 16]

  kinds = {
      'x': x,
      '(x,)': (x,),
      '(x, y)': (x, y),
      '(x, y, w)': (x, y, w),
      '(x, list of labels)': (x, y.tolist()),
      '(x, None)': (x, None),
      'tensor': tf.constant(x),
      'dataset x': tf.data.Dataset.from_tensor_slices(x).batch(16),
      'dataset (x, y)': tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
      'generator': generator(),
      'list of batches': [x[i:i + 16] for i in range(0, 64, 16)],
      'PyDataset': _Batches(x, y, 16),
  }
  for kind, data in kinds.items():
    _scramble_moving_statistics(model, seed=5)
    result = recalibrate_batch_norm(model, data, batch_size=16)
    assert (result.num_batches, result.num_examples) == (4, 64), kind
    try:
      _assert_stats_close(_stats(model), reference, rtol=1e-6, atol=1e-7)
    except AssertionError as e:
      raise AssertionError(f'data kind {kind!r}') from e


def test_num_batches_and_remainder():
  model, _ = _small_model()
  x = _images(64)
  recalibrate_batch_norm(model, x[:32], batch_size=16)
  first_two = _stats(model)
  result = recalibrate_batch_norm(model, x, batch_size=16, num_batches=2)
  assert (result.num_batches, result.num_examples) == (2, 32)
  _assert_stats_close(_stats(model), first_two, rtol=0, atol=0)
  # An infinite dataset is fine with num_batches.
  dataset = tf.data.Dataset.from_tensor_slices(x[:32]).batch(16).repeat()
  result = recalibrate_batch_norm(model, dataset, num_batches=2)
  assert result.num_batches == 2
  _assert_stats_close(_stats(model), first_two, rtol=0, atol=0)
  # Fewer examples than batch_size: one (incomplete) batch.
  result = recalibrate_batch_norm(model, x[:10], batch_size=16)
  assert (result.num_batches, result.num_examples) == (1, 10)
  recalibrate_batch_norm(model, x[:10], batch_size=10)
  only = _stats(model)
  recalibrate_batch_norm(model, x[:10], batch_size=16)
  _assert_stats_close(_stats(model), only, rtol=0, atol=0)


def test_multi_input_dict_model():
  keras.utils.set_random_seed(2)
  a = keras.Input((4,), name='a')
  b = keras.Input((4,), name='b')
  bn = _BN(name='bn')
  model = keras.Model({'a': a, 'b': b}, bn(a + 2.0 * b))
  rng = np.random.default_rng(2)
  xa = rng.normal(size=(30, 4)).astype('float32')
  xb = rng.normal(1.0, 2.0, size=(30, 4)).astype('float32')
  result = recalibrate_batch_norm(model, ({'a': xa, 'b': xb}, None),
                                  batch_size=10)
  assert result.num_batches == 3
  z = (xa + 2.0 * xb).reshape(3, 10, 4)
  np.testing.assert_allclose(bn.moving_mean.numpy(), z.mean(1).mean(0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.moving_variance.numpy(), z.var(1).mean(0),
                             rtol=1e-5)


# --------------------------------------------------------------- nested


class NestedBlock(keras.layers.Layer):
  """A subclassed layer holding BN layers in a list and in an attribute."""

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.convs = [keras.layers.Conv2D(filters, 3, padding='same')
                  for _ in range(2)]
    self.norms = [_BN(momentum=0.9) for _ in range(2)]
    self.pool = diffstride.DiffStride(strides=2.0,
                                      data_format='channels_last')

  def call(self, x, training=None):
    y = keras.ops.relu(self.norms[0](self.convs[0](x), training=training))
    y = self.norms[1](self.convs[1](self.pool(y)), training=training)
    return keras.ops.relu(y)


class NestedNet(keras.Model):

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.stem = keras.layers.Conv2D(4, 3, padding='same')
    self.stem_norm = _BN()
    self.block = NestedBlock(6)
    self.head = keras.layers.Dense(2)

  def call(self, x, training=None):
    y = self.block(self.stem_norm(self.stem(x), training=training),
                   training=training)
    return self.head(keras.ops.mean(y, axis=(1, 2)))


def _cumulative_average_reference(model, batches):
  """Independent check: BN's own training-mode update with momentum k/(k+1).

  With momentum k / (k + 1) at the k-th batch (k = 0, 1, ...) the layer's EMA
  update is the running equal-weight average (the fvcore precise-BN trick).
  """
  norms = _bn_layers(model)
  momenta = [bn.momentum for bn in norms]
  for k, x in enumerate(batches):
    for bn in norms:
      bn.momentum = k / (k + 1.0)
    model(x, training=True)
  for bn, momentum in zip(norms, momenta):
    bn.momentum = momentum
  return _stats(model)


def test_nested_subclassed_layers():
  keras.utils.set_random_seed(4)
  x = _images(48, (12, 12, 3), seed=4)
  model, twin = NestedNet(), NestedNet()
  model(x[:2])
  twin(x[:2])
  _randomize_bn(model, seed=4)
  twin.set_weights(model.get_weights())
  result = recalibrate_batch_norm(model, x, batch_size=16)
  assert len(result.layers) == 3  # stem_norm, and 2 in a list in the block.
  assert len(_bn_layers(model)) == 3
  expected = _cumulative_average_reference(
      twin, [x[i:i + 16] for i in range(0, 48, 16)])
  _assert_stats_close(_stats(model), expected, rtol=1e-4, atol=1e-5)


def test_diffstride_resnet():
  from diffstride import resnet  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(5)
  model = resnet.Resnet(filters=[4, 6], strides=[1, 2], num_output_classes=3,
                        channels_first=False,
                        pooling_cls=diffstride.DiffStride, num_layers=1,
                        kernel_size=3)
  twin = resnet.Resnet.from_config(model.get_config())
  x = _images(32, (12, 12, 3), seed=5)
  model(x[:2])
  twin(x[:2])
  _randomize_bn(model, seed=5)
  twin.set_weights(model.get_weights())
  result = recalibrate_batch_norm(model, x, batch_size=16)
  assert len(result.layers) == len(_bn_layers(model)) >= 4
  expected = _cumulative_average_reference(twin, [x[:16], x[16:]])
  _assert_stats_close(_stats(model), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------- errors


def test_errors():
  model, _ = _small_model()
  x = _images(32)
  with pytest.raises(ValueError, match='empty'):
    recalibrate_batch_norm(model, x[:0])
  with pytest.raises(ValueError, match='empty'):
    recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(
        x).take(0).batch(4))
  with pytest.raises(ValueError, match='empty'):
    recalibrate_batch_norm(model, iter([]))
  with pytest.raises(ValueError, match='empty'):
    recalibrate_batch_norm(model, [])
  for bad in (0, -1, 2.0, '64', True, None):
    with pytest.raises(ValueError, match='batch_size'):
      recalibrate_batch_norm(model, x, batch_size=bad)
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match='num_batches'):
      recalibrate_batch_norm(model, x, num_batches=bad)
  with pytest.raises(ValueError, match='unbatched'):
    recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(x))
  with pytest.raises(ValueError, match='infinite'):
    recalibrate_batch_norm(
        model, tf.data.Dataset.from_tensor_slices(x).batch(8).repeat())
  with pytest.raises(ValueError, match='must be arrays'):
    recalibrate_batch_norm(model, 3)
  with pytest.raises(ValueError, match='must be arrays'):
    recalibrate_batch_norm(model, 'images.npy')
  with pytest.raises(ValueError, match='is None'):
    recalibrate_batch_norm(model, None)
  with pytest.raises(ValueError, match='tuple of 4'):
    recalibrate_batch_norm(model, [(x, x, x, x)])
  with pytest.raises(ValueError, match='tuple of 4'):
    recalibrate_batch_norm(model, (x[:8], x[8:16], x[16:24], x[24:]))
  with pytest.raises(ValueError, match='tuple of 2'):
    recalibrate_batch_norm(model, ([x[:8]], [x[8:16]]))
  with pytest.raises(ValueError, match='differ in length'):
    recalibrate_batch_norm(model, ({'a': x, 'b': x[:3]},))
  no_bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  with pytest.raises(ValueError, match='no BatchNormalization'):
    recalibrate_batch_norm(no_bn, np.zeros((8, 4), 'float32'))
  with pytest.raises(ValueError, match='Keras model'):
    recalibrate_batch_norm(lambda v: v, x)
  with pytest.raises(ValueError, match='not built'):
    recalibrate_batch_norm(keras.Sequential([_BN()]), x)
  renorm = keras.Sequential([keras.Input((4,)), _BN(renorm=True)])
  with pytest.raises(ValueError, match='renorm'):
    recalibrate_batch_norm(renorm, np.zeros((8, 4), 'float32'))


def test_errors_leave_no_hook():
  model, layers = _small_model()
  with pytest.raises(ValueError, match='unbatched'):
    recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(
        _images(8)))
  assert 'call' not in vars(layers['bn1'])


# ------------------------------------------------- distribution, dtypes

# Logical devices must be configured before TensorFlow initialises its
# runtime, which this pytest process has already done: run in a fresh one
# (as tests/distribute_test.py does).
_MIRRORED_SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    devices = [d.name for d in tf.config.list_logical_devices('CPU')]

    import keras
    import diffstride
    from diffstride.recalibration import BatchNormRecalibration
    from diffstride.recalibration import recalibrate_batch_norm

    def build():
      inputs = keras.Input((16, 16, 3))
      y = keras.layers.Conv2D(4, 3, padding='same')(inputs)
      y = keras.layers.BatchNormalization(momentum=0.9, name='bn1')(y)
      y = keras.layers.ReLU()(y)
      y = diffstride.DiffStride(strides=(2.0, 2.5),
                                data_format='channels_last')(y)
      y = keras.layers.Conv2D(4, 3, padding='same')(y)
      y = keras.layers.BatchNormalization(momentum=0.9, name='bn2')(y)
      y = keras.layers.GlobalAveragePooling2D()(y)
      return keras.Model(inputs, keras.layers.Dense(2)(y))

    def bns(model):
      return [model.get_layer('bn1'), model.get_layer('bn2')]

    def replica_values(variable):
      # One array per replica's copy of a MirroredVariable.
      return [np.asarray(v).tolist()
              for v in strategy.experimental_local_results(variable.value)]

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
      model = build()
      model.compile(optimizer=keras.optimizers.Adam(0.05), loss='mse')
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((64, 16, 16, 3)) + 1).astype('float32')
    t = rng.standard_normal((64, 2)).astype('float32')
    callback = BatchNormRecalibration(x, batch_size=16,
                                      before_validation=True)
    model.fit(x, t, batch_size=16, epochs=2, verbose=0,
              validation_data=(x[:32], t[:32]), callbacks=[callback])
    after_fit = [[replica_values(b.moving_mean),
                  replica_values(b.moving_variance)] for b in bns(model)]
    iterations = int(model.optimizer.iterations.numpy())

    # The same weights in a model built without a strategy.
    plain = build()
    plain.set_weights(model.get_weights())
    for b in bns(plain):
      b.moving_mean.assign(np.zeros(b.moving_mean.shape, 'float32'))
    recalibrate_batch_norm(plain, x, batch_size=16)
    reference = [[b.moving_mean.numpy().tolist(),
                  b.moving_variance.numpy().tolist()] for b in bns(plain)]

    # Direct calls, outside and inside the strategy's scope.
    calls = {}
    for where in ('outside', 'inside'):
      for b in bns(model):
        b.moving_mean.assign(np.zeros(b.moving_mean.shape, 'float32'))
      if where == 'inside':
        with strategy.scope():
          result = recalibrate_batch_norm(model, x, batch_size=16)
      else:
        result = recalibrate_batch_norm(model, x, batch_size=16)
      calls[where] = {
          'num_batches': result.num_batches,
          'stats': [[replica_values(b.moving_mean),
                     replica_values(b.moving_variance)] for b in bns(model)],
      }
    # Not from inside strategy.run (replica context).
    try:
      strategy.run(lambda: recalibrate_batch_norm(model, x, batch_size=16))
      replica_error = ''
    except ValueError as e:
      replica_error = str(e)
    print('RESULT ' + json.dumps({
        'replica_error': replica_error,
        'replicas': strategy.num_replicas_in_sync,
        'variable_type': type(model.get_layer('bn1').moving_mean.value
                              ).__name__,
        'when': [w for w, _ in callback.results],
        'iterations': iterations,
        'after_fit': after_fit,
        'reference': reference,
        'calls': calls,
    }))
''')


@pytest.mark.slow  # 2 cores: 16 s at load average 4, 25-28 s at 7-9.
def test_mirrored_strategy_two_cpus():
  result = subprocess_testing.run_script(_MIRRORED_SCRIPT, timeout=300)
  assert result['replicas'] == 2
  assert result['variable_type'] == 'MirroredVariable'
  assert result['when'] == ['validation, epoch 0', 'validation, epoch 1',
                            'train_end']
  assert result['iterations'] == 8
  reference = result['reference']
  for stats in (result['after_fit'], result['calls']['outside']['stats'],
                result['calls']['inside']['stats']):
    for (means, variances), (ref_mean, ref_var) in zip(stats, reference):
      assert len(means) == len(variances) == 2  # One copy per replica.
      for value in means:
        np.testing.assert_allclose(value, ref_mean, rtol=1e-6, atol=1e-6)
      for value in variances:
        np.testing.assert_allclose(value, ref_var, rtol=1e-6, atol=1e-6)
  assert result['calls']['inside']['num_batches'] == 4
  assert 'cross-replica context' in result['replica_error']


def test_mixed_precision():
  keras.mixed_precision.set_dtype_policy('mixed_float16')
  try:
    model, layers = _small_model()
  finally:
    keras.mixed_precision.set_dtype_policy('float32')
  assert layers['conv1'].compute_dtype == 'float16'
  assert layers['bn1'].compute_dtype == 'float16'
  x = _images(64)
  result = recalibrate_batch_norm(model, x, batch_size=32)
  assert result.num_batches == 2
  expected = _numpy_statistics(layers, [x[:32], x[32:]])
  for name in ('bn1', 'bn2'):
    bn = layers[name]
    assert bn.moving_mean.dtype == 'float32'
    assert bn.moving_variance.dtype == 'float32'
    # float16 activations: the numpy BN output is rounded to float16 at
    # other places than the layer's.
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected[name][0],
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected[name][1],
                               rtol=2e-3, atol=2e-3)
  assert model(x[:2]).dtype == 'float16'


# ------------------------------------------------------------- callback


def _compiled_small_model(seed=0):
  model, layers = _small_model(seed=seed)
  model.compile(optimizer=keras.optimizers.Adam(0.02), loss='mse')
  return model, layers


def _regression_data():
  x = _images(64)
  t = np.random.default_rng(1).standard_normal((64, 3)).astype('float32')
  return x, t


def test_callback_recalibrates_at_end_of_fit():
  x, t = _regression_data()
  model, _ = _compiled_small_model()
  callback = BatchNormRecalibration(x, batch_size=16)
  model.fit(x, t, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
  assert [w for w, _ in callback.results] == ['train_end']
  assert callback.results[0][1].num_batches == 4
  after_fit = _stats(model)
  control, _ = _compiled_small_model()
  control.fit(x, t, batch_size=16, epochs=2, verbose=0)
  ema = _stats(control)
  # Same training (the callback does nothing before the end) ...
  np.testing.assert_array_equal(model.get_layer('dense').kernel.numpy(),
                                control.get_layer('dense').kernel.numpy())
  # ... but recalibrated statistics, not the EMA.
  recalibrate_batch_norm(control, x, batch_size=16)
  _assert_stats_close(after_fit, _stats(control), rtol=0, atol=0)
  assert not np.allclose(after_fit[1][0], ema[1][0], rtol=1e-3)


class _Probe(keras.callbacks.Callback):
  """At each epoch end: the BN statistics and the validation loss then."""

  def __init__(self, x, t, val):
    super().__init__()
    self.x, self.t, self.val = x, t, val
    self.rows = []

  def on_epoch_end(self, epoch, logs=None):
    stats = _stats(self.model)
    loss = self.model.evaluate(*self.val, batch_size=16, verbose=0)
    # Recalibrating again gives the same values iff they were recalibrated.
    recalibrate_batch_norm(self.model, self.x, batch_size=16)
    recalibrated = _stats(self.model)
    for bn, (mean, var) in zip(_bn_layers(self.model), stats):
      bn.moving_mean.assign(mean)
      bn.moving_variance.assign(var)
    self.rows.append(dict(epoch=epoch, logs=dict(logs), loss=loss,
                          stats=stats, recalibrated=recalibrated))


@pytest.mark.parametrize('before_validation', (True, False))
def test_callback_before_validation(before_validation):
  x, t = _regression_data()
  val = (x[:32], t[:32])
  model, _ = _compiled_small_model()
  callback = BatchNormRecalibration(x, batch_size=16,
                                    before_validation=before_validation)
  probe = _Probe(x, t, val)
  history = model.fit(x, t, batch_size=16, epochs=3, verbose=0,
                      validation_data=val, callbacks=[callback, probe])
  when = [w for w, _ in callback.results]
  if before_validation:
    assert when == ['validation, epoch 0', 'validation, epoch 1',
                    'validation, epoch 2', 'train_end']
  else:
    assert when == ['train_end']
  for row, val_loss in zip(probe.rows, history.history['val_loss']):
    # The validation in history ran with the statistics present at epoch
    # end (nothing happens between the two) ...
    np.testing.assert_allclose(val_loss, row['loss'], rtol=1e-5)
    assert row['logs']['val_loss'] == val_loss
    # ... which are the recalibrated ones iff before_validation.
    close = all(np.allclose(a, b, rtol=1e-6, atol=1e-6)
                for pair in zip(row['stats'], row['recalibrated'])
                for a, b in zip(*pair))
    assert close == before_validation, row['epoch']


def test_callback_validation_freq_and_standalone_evaluate():
  x, t = _regression_data()
  model, _ = _compiled_small_model()
  callback = BatchNormRecalibration(x, batch_size=16, num_batches=2,
                                    before_validation=True)
  model.fit(x, t, batch_size=16, epochs=4, verbose=0, validation_freq=2,
            validation_data=(x[:16], t[:16]), callbacks=[callback])
  assert [w for w, _ in callback.results] == [
      'validation, epoch 1', 'validation, epoch 3', 'train_end']
  assert all(r.num_batches == 2 for _, r in callback.results)
  stats = _stats(model)
  model.evaluate(x, t, verbose=0, callbacks=[callback])  # Outside fit.
  assert len(callback.results) == 3
  _assert_stats_close(_stats(model), stats, rtol=0, atol=0)


def test_callback_data_must_be_reiterable():
  x, _ = _regression_data()
  with pytest.raises(ValueError, match='one-shot'):
    BatchNormRecalibration(iter([x]))
  with pytest.raises(ValueError, match='one-shot'):
    BatchNormRecalibration(b for b in [x])
  with pytest.raises(ValueError, match='batch_size'):
    BatchNormRecalibration(x, batch_size=0)
  with pytest.raises(ValueError, match='num_batches'):
    BatchNormRecalibration(x, num_batches=0)

  def batches():  # A generator function is called afresh every time.
    for i in range(0, 64, 16):
      yield x[i:i + 16]

  model, _ = _compiled_small_model()
  callback = BatchNormRecalibration(batches, before_validation=True)
  model.fit(x, x[:, 0, 0, :], batch_size=16, epochs=2, verbose=0,
            validation_data=(x[:16], x[:16, 0, 0, :]), callbacks=[callback])
  assert [r.num_batches for _, r in callback.results] == [4, 4, 4]


# --------------------------------------------------------------- digits


def _digits():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  x = np.kron(digits.images, np.ones((4, 4)))[..., None] / 16.0
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm].astype('float32'), digits.target[perm].astype('int32')
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _digits_model():
  inputs = keras.Input((32, 32, 1))
  y = inputs
  for i, filters in enumerate((16, 32, 64)):
    y = keras.layers.Conv2D(filters, 3, padding='same')(y)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    y = keras.layers.ReLU()(y)
    if i < 2:
      y = diffstride.DiffStride(strides=float((2, 3)[i]),
                                data_format='channels_last')(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, keras.layers.Dense(10)(y))


@pytest.mark.slow
def test_digits_diffstride_recalibration():
  """Issue 12: erratic inference-mode accuracy, cured by recalibration."""
  pytest.importorskip('sklearn')
  (x_train, y_train), (x_test, y_test) = _digits()
  assert x_train.shape == (1400, 32, 32, 1) and x_test.shape[0] == 397
  keras.utils.set_random_seed(2)
  model = _digits_model()
  model.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                metrics=['accuracy'])
  history = model.fit(x_train, y_train, batch_size=64, epochs=12, verbose=0,
                      validation_data=(x_test, y_test))
  train_accuracy = history.history['accuracy'][-1]
  moving = history.history['val_accuracy']  # With moving statistics.
  before = model.evaluate(x_test, y_test, verbose=0)[1]
  recalibrate_batch_norm(model, x_train, batch_size=64)
  after = model.evaluate(x_test, y_test, verbose=0)[1]
  print(f'train {train_accuracy:.3f}, test per epoch (moving stats) '
        f'{np.round(moving, 3).tolist()}, before {before:.3f}, '
        f'after {after:.3f}')
  assert train_accuracy > 0.9
  # Erratic with moving statistics: at least one of the last six epochs is
  # well below what the same weights reach once recalibrated.
  assert min(moving[6:]) < 0.9, moving
  assert after >= 0.93, (before, after)
  assert after >= before
