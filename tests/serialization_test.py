"""Configs, saving, export, model APIs, output shapes and gin for the layers."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride
import diffstride.experiments  # Registers the layers with gin (the harness).

_DIFFSTRIDE_ARGS = dict(strides=(2.5, 1.5), smoothness_factor=3.0,
                        cropping=False, trainable=False, shared_stride=False,
                        lower_limit_stride=1.2, upper_limit_stride=6.0,
                        data_format='channels_last', implementation='fft')
_LAYER_ARGS = [
    (diffstride.DiffStride, _DIFFSTRIDE_ARGS),
    (diffstride.DiffStride, dict(strides=(3.0, 3.0), smoothness_factor=2.0,
                                 cropping=True, trainable=True,
                                 shared_stride=True, lower_limit_stride=None,
                                 upper_limit_stride=None,
                                 data_format='channels_first',
                                 implementation='matmul')),
    (diffstride.FixedSpectralPooling, dict(strides=(1.5, 3.0),
                                           data_format='channels_last',
                                           implementation='matmul')),
    (diffstride.SpatialPooling, dict(pool_size=(3, 2), strides=(2, 3),
                                     data_format='channels_first')),
]
_LAYER_IDS = ['DiffStride', 'DiffStride_shared', 'FixedSpectralPooling',
              'SpatialPooling']


def _normalize(value):
  if isinstance(value, (list, tuple)):
    return tuple(_normalize(v) for v in value)
  return value


def _random(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize('layer_cls, kwargs', _LAYER_ARGS, ids=_LAYER_IDS)
def test_config_round_trip(layer_cls, kwargs):
  layer = layer_cls(name='my_layer', **kwargs)
  config = layer.get_config()
  for key, value in kwargs.items():
    assert _normalize(config[key]) == _normalize(value), key
  assert config['name'] == 'my_layer'
  clone = layer_cls.from_config(config)
  assert type(clone) is layer_cls
  assert clone.get_config() == config
  assert clone.trainable == kwargs.get('trainable', True)
  # Through Keras' generic (de)serialization too, by registered name.
  revived = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(revived) is layer_cls
  assert revived.get_config() == config


def test_config_round_trip_keeps_behaviour():
  layer = diffstride.DiffStride(**_DIFFSTRIDE_ARGS)
  x = _random((2, 20, 20, 2))
  y = layer(x)
  clone = diffstride.DiffStride.from_config(layer.get_config())
  clone.build(x.shape)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x), y)
  assert clone.smoothness_factor == 3.0
  assert not clone.trainable_weights


@pytest.mark.parametrize('lower, upper', [(None, None), (1.5, None),
                                          (None, 4.0), (1.5, 4.0)])
def test_stride_constraint_round_trip(lower, upper):
  constraint = diffstride.StrideConstraint(lower, upper)
  config = constraint.get_config()
  assert config == {'lower_limit': lower, 'upper_limit': upper}
  clone = diffstride.StrideConstraint.from_config(config)
  assert type(clone) is diffstride.StrideConstraint
  assert clone.get_config() == config
  revived = keras.constraints.deserialize(keras.constraints.serialize(
      constraint))
  assert type(revived) is diffstride.StrideConstraint
  assert revived.get_config() == config
  w = tf.constant([0.5, 1.0, 2.0, 3.0, 5.0, 1e30])
  expected = np.clip(w.numpy(), 1.0 if lower is None else lower,
                     np.finfo(np.float32).max if upper is None else upper)
  np.testing.assert_array_equal(revived(w), expected)


def _conv_diffstride_model(data_format='channels_last'):
  """conv -> DiffStride -> conv -> GAP -> Dense, taking `data_format` inputs.

  TensorFlow's CPU Conv2D only runs NHWC, so the convolutions stay
  channels_last and channels_first inputs go through Permute layers around
  them; DiffStride itself sees `data_format`.
  """
  channels_first = data_format == 'channels_first'
  inputs = keras.Input((3, 32, 32) if channels_first else (32, 32, 3))
  y = keras.layers.Permute((2, 3, 1))(inputs) if channels_first else inputs
  y = keras.layers.Conv2D(4, 3, padding='same')(y)
  if channels_first:
    y = keras.layers.Permute((3, 1, 2))(y)
  y = diffstride.DiffStride(strides=(2.0, 2.5), data_format=data_format,
                            name='ds')(y)
  if channels_first:
    y = keras.layers.Permute((2, 3, 1))(y)
  y = keras.layers.Conv2D(4, 3, padding='same')(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, keras.layers.Dense(3)(y))


def _train(model, x, steps=3):
  model.compile(optimizer=keras.optimizers.Adam(0.1), loss='mse')
  target = _random((x.shape[0], 3), seed=99)
  model.fit(x, target, epochs=steps, batch_size=x.shape[0], verbose=0)


@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
def test_keras_save_load_after_training(tmp_path, data_format):
  keras.utils.set_random_seed(0)
  model = _conv_diffstride_model(data_format)
  shape = (4, 32, 32, 3) if data_format == 'channels_last' else (4, 3, 32, 32)
  x = _random(shape, seed=1)
  _train(model, x)
  strides = model.get_layer('ds').strides.numpy()
  assert np.all(np.abs(strides - [2.0, 2.5]) > 1e-3), strides  # it learned
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  layer = loaded.get_layer('ds')
  assert type(layer) is diffstride.DiffStride
  np.testing.assert_array_equal(layer.strides.numpy(), strides)
  np.testing.assert_array_equal(loaded(x), model(x))
  # The loaded model keeps training (optimizer state and constraint intact).
  loaded.fit(x, _random((4, 3), seed=99), epochs=1, batch_size=4, verbose=0)
  assert np.all(np.isfinite(layer.strides.numpy()))
  assert not np.array_equal(layer.strides.numpy(), strides)


def test_sequential_model():
  model = keras.Sequential([
      keras.Input((24, 24, 2)),
      diffstride.DiffStride(strides=(2.0, 2.0), data_format='channels_last'),
      keras.layers.Conv2D(3, 3, padding='same'),
      keras.layers.GlobalAveragePooling2D(),
  ])
  x = _random((2, 24, 24, 2))
  assert model(x).shape == (2, 3)
  assert model.layers[0](x).shape == (2, 20, 20, 2)
  model.compile(optimizer='sgd', loss='mse')
  model.fit(x, np.zeros((2, 3), 'f4'), epochs=1, verbose=0)
  assert len(model.trainable_weights) == 3  # strides, kernel, bias


def test_functional_model_keeps_channels_static():
  inputs = keras.Input((3, 32, 32))
  layer = diffstride.DiffStride(strides=(2.0, 4.0))
  y = layer(inputs)
  assert tuple(y.shape) == (None, 3, None, None)
  y = keras.layers.Permute((2, 3, 1))(y)  # CPU Conv2D is NHWC only.
  assert tuple(y.shape) == (None, None, None, 3)
  y = keras.layers.Conv2D(2, 3)(y)
  model = keras.Model(inputs, y)
  assert model(_random((1, 3, 32, 32))).shape == (1, 22, 14, 2)


class SubclassedModel(keras.Model):

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.conv = keras.layers.Conv2D(4, 3, padding='same')
    self.pool = diffstride.DiffStride(strides=(2.0, 2.0),
                                      data_format='channels_last')
    self.head = keras.layers.Conv2D(2, 3, padding='same')
    self.gap = keras.layers.GlobalAveragePooling2D()

  def call(self, x):
    return self.gap(self.head(self.pool(self.conv(x))))


def test_subclassed_model_trains_strides():
  keras.utils.set_random_seed(1)
  model = SubclassedModel()
  x = _random((4, 24, 24, 3))
  assert model(x).shape == (4, 2)
  assert any(w is model.pool.strides for w in model.trainable_weights)
  before = model.pool.strides.numpy().copy()
  model.compile(optimizer=keras.optimizers.Adam(0.1), loss='mse')
  model.fit(x, _random((4, 2), 2), epochs=2, batch_size=4, verbose=0)
  after = model.pool.strides.numpy()
  assert np.all(np.isfinite(after)) and np.all(after != before)


@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
def test_tf_function_unknown_batch(data_format):
  keras.utils.set_random_seed(2)
  model = _conv_diffstride_model(data_format)
  shape = (32, 32, 3) if data_format == 'channels_last' else (3, 32, 32)
  layer = model.get_layer('ds')

  @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32)])
  def forward(x):
    with tf.GradientTape() as tape:
      y = model(x)
      loss = tf.reduce_sum(tf.square(y))
    return y, tape.gradient(loss, layer.strides)

  for batch in (1, 3):
    x = _random((batch,) + shape, seed=batch)
    y, grad = forward(x)
    np.testing.assert_allclose(y, model(x), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # Strides changed after tracing: the traced function reads the new value,
  # including a new output size inside the graph.
  layer.strides.assign([3.5, 1.5])
  x = _random((2,) + shape, seed=5)
  np.testing.assert_allclose(forward(x)[0], model(x), rtol=1e-5, atol=1e-6)
  assert len(forward._list_all_concrete_functions()) == 1  # no retracing


def test_tf_function_unknown_spatial_dims():
  layer = diffstride.DiffStride(strides=(2.0, 2.5))  # 'auto': matmul here
  eager = diffstride.DiffStride(strides=(2.0, 2.5), implementation='fft')
  forward = tf.function(
      layer, input_signature=[tf.TensorSpec((None, 3, None, None))])
  for hw in ((32, 32), (24, 20), (9, 31)):
    x = _random((2, 3) + hw, seed=hw[0])
    np.testing.assert_allclose(forward(x), eager(x), rtol=1e-5, atol=1e-6)


def test_export_serving(tmp_path):
  keras.utils.set_random_seed(3)
  model = _conv_diffstride_model()
  x = _random((4, 32, 32, 3), seed=4)
  _train(model, x)
  path = str(tmp_path / 'exported')
  model.export(path, verbose=False)
  restored = tf.saved_model.load(path)
  for batch in (4, 1):
    np.testing.assert_allclose(restored.serve(x[:batch]), model(x[:batch]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
@pytest.mark.parametrize('make', [
    lambda df: diffstride.DiffStride(strides=(2.0, 3.0), data_format=df),
    lambda df: diffstride.FixedSpectralPooling(strides=(2.0, 3.0),
                                               data_format=df),
    lambda df: diffstride.SpatialPooling(strides=(2, 3), data_format=df),
], ids=['DiffStride', 'FixedSpectralPooling', 'SpatialPooling'])
def test_compute_output_shape_respects_data_format(make, data_format):
  layer = make(data_format)
  channels_first = data_format == 'channels_first'
  shape = (2, 5, 33, 20) if channels_first else (2, 33, 20, 5)
  y = layer(_random(shape))
  for batch in (2, None):
    static = layer.compute_output_shape((batch,) + shape[1:])
    assert len(static) == 4
    assert static[0] == batch
    if channels_first:
      assert static[1] == 5
      spatial = static[2:]
    else:
      assert static[3] == 5
      spatial = static[1:3]
    actual = tuple(y.shape[2:] if channels_first else y.shape[1:3])
    # DiffStride's output size depends on its strides' value, which can
    # change after tracing: unknown statically. The others' is fixed.
    expected = ((None, None) if isinstance(layer, diffstride.DiffStride)
                else actual)
    assert tuple(spatial) == expected, (static, y.shape)
  expected_hw = {
      diffstride.DiffStride: (25, 16),
      diffstride.FixedSpectralPooling: (16, 6),
      diffstride.SpatialPooling: (17, 7),
  }[type(layer)]
  assert tuple(y.shape) == ((2, 5) + expected_hw if channels_first
                            else (2,) + expected_hw + (5,))
  symbolic = layer(keras.Input(shape[1:]))
  assert symbolic.shape[1 if channels_first else 3] == 5


@gin.configurable
def _gin_holder(layer=gin.REQUIRED, other=None):
  return layer, other


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_gin_builds_plain_diffstride(clean_gin):
  gin.parse_config("""
      _gin_holder.layer = @DiffStride()
      _gin_holder.other = @LearnableSpectralPooling()
      DiffStride.smoothness_factor = 2.0
      DiffStride.strides = (3.0, 2.0)
      LearnableSpectralPooling.data_format = 'channels_last'
  """)
  layer, other = _gin_holder()
  assert type(layer) is diffstride.DiffStride
  assert type(other) is diffstride.DiffStride
  assert diffstride.LearnableSpectralPooling is diffstride.DiffStride
  assert layer.smoothness_factor == 2.0
  assert layer.get_config()['strides'] == (3.0, 2.0)
  assert other.data_format == 'channels_last'
  # A gin-built layer serializes like any other.
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is diffstride.DiffStride
  assert clone.smoothness_factor == 2.0
  assert layer(_random((1, 2, 16, 16))).shape == (1, 2, 10, 12)


def test_gin_module_qualified_names(clean_gin):
  gin.parse_config("""
      _gin_holder.layer = @diffstride.DiffStride()
      _gin_holder.other = @diffstride.FixedSpectralPooling()
      diffstride.DiffStride.cropping = False
      FixedSpectralPooling.strides = 3.0
  """)
  layer, other = _gin_holder()
  assert type(layer) is diffstride.DiffStride
  assert layer.get_config()['cropping'] is False
  assert type(other) is diffstride.FixedSpectralPooling
  assert other.get_config()['strides'] == (3.0, 3.0)


def test_gin_spatial_pooling_and_constraint(clean_gin):
  gin.parse_config("""
      _gin_holder.layer = @SpatialPooling()
      _gin_holder.other = @StrideConstraint()
      SpatialPooling.strides = 3
      StrideConstraint.upper_limit = 5.0
  """)
  layer, constraint = _gin_holder()
  assert type(layer) is diffstride.SpatialPooling
  assert layer.strides == (3, 3)
  assert type(constraint) is diffstride.StrideConstraint
  assert constraint.get_config() == {'lower_limit': None, 'upper_limit': 5.0}


def test_gin_unknown_name_raises(clean_gin):
  with pytest.raises(ValueError, match='DiffStrid'):
    gin.parse_config('_gin_holder.layer = @DiffStrid()')
  with pytest.raises(ValueError, match='DifStride'):
    gin.parse_config('DifStride.smoothness_factor = 2.0')


def test_gin_unknown_parameter_raises(clean_gin):
  gin.parse_config("""
      _gin_holder.layer = @DiffStride()
      DiffStride.smoothnes_factor = 2.0
  """)
  with pytest.raises(ValueError, match='smoothnes_factor'):
    _gin_holder()
