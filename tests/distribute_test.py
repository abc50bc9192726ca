"""DiffStride under tf.distribute and Keras' jit_compile='auto' logic."""

import os
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.trainers import trainer as keras_trainer
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import

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


class _XlaProbe(keras.layers.Layer):
  """Identity that records, each time a graph is traced through it, whether
  XLA compiles that graph (TensorFlow's own mark of a jit_compile trace)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.traced_under_xla = []

  def call(self, x):
    if not tf.executing_eagerly():
      graph = tf.compat.v1.get_default_graph()
      self.traced_under_xla.append(
          bool(control_flow_util.GraphOrParentsInXlaContext(graph)))
    return x


def _model(pool):
  inputs = keras.Input((16, 16, 2))
  y = keras.layers.Conv2D(2, 3, padding='same')(inputs)
  y = pool(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  y = keras.layers.Dense(1)(y)
  return keras.Model(inputs, _XlaProbe(name='probe')(y))


def _with_an_accelerator(monkeypatch):
  """Makes TensorFlow list a GPU, as Keras' jit_compile='auto' sees it."""
  real = tf.config.list_physical_devices

  def list_physical_devices(device_type=None):
    devices = list(real(device_type))
    if device_type in (None, 'GPU'):
      devices.append(tf.config.PhysicalDevice('/physical_device:GPU:0', 'GPU'))
    return devices

  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      list_physical_devices)


@pytest.mark.parametrize('nested', (False, True))
def test_diffstride_does_not_turn_off_jit_for_the_model(nested, monkeypatch):
  """jit_compile='auto' decides for a model with DiffStride exactly as for
  the same model with average pooling: no for both on CPU-only TensorFlow,
  yes for both with an accelerator (simulated here: Keras decides from the
  device list). And a yes is real: Keras compiles the DiffStride model's
  predict step with XLA, which computes what the graph step does."""
  def make(pool):
    if nested:
      pool = keras.Sequential([keras.Input((16, 16, 2)), pool])
    model = _model(pool)
    diffstride.track_sizes(model)
    model.compile(optimizer='sgd', loss='mse', jit_compile='auto')
    return model

  def pools():
    return (diffstride.DiffStride(strides=(2.0, 2.5),
                                  data_format='channels_last'),
            keras.layers.AveragePooling2D(2))

  accelerator = any(d.device_type != 'CPU'
                    for d in tf.config.list_physical_devices())
  keras.utils.set_random_seed(0)
  with_diffstride, control = [make(pool) for pool in pools()]
  assert keras_trainer.model_supports_jit(with_diffstride) is True
  assert control.jit_compile is accelerator
  assert with_diffstride.jit_compile == control.jit_compile

  with monkeypatch.context() as patch:
    _with_an_accelerator(patch)
    keras.utils.set_random_seed(0)
    xla_with_diffstride, xla_control = [make(pool) for pool in pools()]
  assert xla_control.jit_compile is True
  assert xla_with_diffstride.jit_compile is True

  # Run here (with or without an accelerator) the XLA decision's model
  # against the model Keras left uncompiled, from the same weights.
  graph_model = with_diffstride
  if graph_model.jit_compile:  # An accelerator: 'auto' said yes already.
    graph_model.compile(optimizer='sgd', loss='mse', jit_compile=False)
  assert graph_model.jit_compile is False
  graph_model.set_weights(xla_with_diffstride.get_weights())
  x = np.random.default_rng(0).standard_normal((4, 16, 16, 2)).astype(
      np.float32)
  probes = [m.get_layer('probe') for m in (graph_model, xla_with_diffstride)]
  for probe in probes:
    probe.traced_under_xla.clear()  # Shape inference traced it too.
  expected = graph_model.predict(x, batch_size=4, verbose=0)
  got = xla_with_diffstride.predict(x, batch_size=4, verbose=0)
  assert probes[0].traced_under_xla == [False]
  assert probes[1].traced_under_xla == [True]
  assert np.all(np.isfinite(got)) and np.max(np.abs(expected)) > 1e-3
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


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
  # XLA's own lowering of the function: raises if XLA cannot compile it.
  hlo = compiled.experimental_get_compiler_ir(x)(stage='hlo')
  assert 'HloModule' in hlo
  np.testing.assert_allclose(compiled(x), expected, rtol=0, atol=1e-5)
