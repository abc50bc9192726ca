"""DiffStride under tf.distribute and Keras' jit_compile='auto' logic."""

import os
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.trainers import trainer as keras_trainer

import diffstride

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

# Logical devices must be configured before TensorFlow initialises its
# runtime, which this pytest process has already done: run in a fresh one.
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

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
      inputs = keras.Input((24, 24, 3))
      y = keras.layers.Conv2D(4, 3, padding='same')(inputs)
      layer = diffstride.DiffStride(strides=(2.0, 2.5),
                                    data_format='channels_last', name='ds')
      y = layer(y)
      y = keras.layers.Conv2D(4, 3, padding='same')(y)
      y = keras.layers.GlobalAveragePooling2D()(y)
      model = keras.Model(inputs, keras.layers.Dense(2)(y))
      model.compile(optimizer=keras.optimizers.Adam(0.05), loss='mse')
    initial = layer.strides.numpy().tolist()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 24, 24, 3)).astype('float32')
    t = rng.standard_normal((16, 2)).astype('float32')
    history = model.fit(x, t, batch_size=8, epochs=2, verbose=0)

    # Input validation inside tf.function and strategy.run, where the
    # spatial size is only known when the step runs.
    with strategy.scope():
      probe = diffstride.DiffStride(data_format='channels_last')
      probe.build((None, None, None, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
    def replica_forward(x):
      return strategy.run(probe, args=(x,))

    fine = strategy.experimental_local_results(
        replica_forward(tf.zeros([4, 8, 8, 3])))
    try:
      replica_forward(tf.zeros([4, 4, 4, 3]))
      small_error = ''
    except tf.errors.InvalidArgumentError as e:
      small_error = str(e)
    print('RESULT ' + json.dumps({
        'fine_shapes': [list(v.shape) for v in fine],
        'small_error': small_error,
        'devices': devices,
        'replicas': strategy.num_replicas_in_sync,
        'variable_type': type(layer.strides.value).__name__,
        'initial': initial,
        'strides': layer.strides.numpy().tolist(),
        'loss': [float(v) for v in history.history['loss']],
    }))
''')


def test_mirrored_strategy_two_cpus():
  result = subprocess_testing.run_script(_MIRRORED_SCRIPT, timeout=300)
  assert len(result['devices']) == 2
  assert result['replicas'] == 2
  assert result['variable_type'] == 'MirroredVariable'
  initial = np.array(result['initial'])
  strides = np.array(result['strides'])
  np.testing.assert_allclose(initial, [2.0, 2.5])
  assert strides.shape == (2,)
  assert np.all(np.isfinite(strides))
  assert np.all(np.abs(strides - initial) > 1e-4), strides
  assert np.all(strides >= 1.0)
  assert np.all(np.isfinite(result['loss']))
  # strategy.run gives each replica the whole (undistributed) batch.
  assert result['fine_shapes'] == [[4, 8, 8, 3]] * 2
  assert 'too small for smoothness_factor' in result['small_error']


def test_diffstride_supports_jit_once_its_sizes_are_tracked():
  """Under XLA DiffStride's output size is static: Keras may compile a model
  with DiffStride once `track_sizes` keeps those sizes current, not before."""
  layers = [diffstride.DiffStride(data_format='channels_last'),
            diffstride.LearnableSpectralPooling(strides=3.0,
                                                data_format='channels_last')]
  assert [layer.supports_jit for layer in layers] == [False, False]
  model = keras.Sequential([keras.Input((16, 16, 2))] + layers)
  assert keras_trainer.model_supports_jit(model) is False
  diffstride.track_sizes(model)
  assert [layer.supports_jit for layer in layers] == [True, True]
  assert keras_trainer.model_supports_jit(model) is True


def _model(pool):
  inputs = keras.Input((16, 16, 2))
  y = keras.layers.Conv2D(2, 3, padding='same')(inputs)
  y = pool(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, keras.layers.Dense(1)(y))


@pytest.mark.parametrize('nested', (False, True))
def test_diffstride_does_not_turn_off_jit_for_the_model(nested):
  """jit_compile='auto' decides for a model with DiffStride exactly as for
  the same model with average pooling (on CPU TensorFlow Keras says no for
  both; on GPU yes for both)."""
  def make(pool):
    if nested:
      pool = keras.Sequential([keras.Input((16, 16, 2)), pool])
    model = _model(pool)
    diffstride.track_sizes(model)
    model.compile(optimizer='sgd', loss='mse', jit_compile='auto')
    return model

  with_diffstride = make(diffstride.DiffStride(data_format='channels_last'))
  control = make(keras.layers.AveragePooling2D(2))
  assert keras_trainer.model_supports_jit(with_diffstride) is True
  assert with_diffstride.jit_compile == control.jit_compile


@pytest.mark.parametrize('implementation', [
    'auto',
    'matmul',
    'fft',
])
@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
def test_fixed_spectral_pooling_compiles_with_xla(implementation, data_format):
  """FixedSpectralPooling claims supports_jit: it must compile under XLA."""
  layer = diffstride.FixedSpectralPooling(strides=(2.0, 1.5),
                                          data_format=data_format,
                                          implementation=implementation)
  assert layer.supports_jit is True
  shape = (2, 3, 32, 32) if data_format == 'channels_first' else (2, 32, 32, 3)
  x = tf.constant(np.random.default_rng(0).standard_normal(shape), tf.float32)
  expected = layer(x)
  compiled = tf.function(layer, jit_compile=True)
  np.testing.assert_allclose(compiled(x), expected, rtol=0, atol=1e-5)
