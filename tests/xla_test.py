"""DiffStride under XLA on TensorFlow: jit_compile, exports, tf.distribute.

The per-backend cases (fixtures, gradients, fit with and without XLA / jit,
custom loops, saving) are in `backend_cases.py`, run by `backends_test.py`.
"""

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.trainers import trainer as keras_trainer

import diffstride
from diffstride import pooling
from diffstride import resnet
from diffstride import sizes


def _random(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_layers_support_jit():
  """FixedSpectralPooling always; DiffStride layers once tracked (the
  ResNet tracks its own)."""
  assert diffstride.FixedSpectralPooling().supports_jit is True
  for layer in (diffstride.DiffStride(), diffstride.DiffStride1D()):
    assert layer.supports_jit is False
  model = resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3, pooling_cls=pooling.DiffStride)
  model.build((None, 32, 32, 3))
  assert keras_trainer.model_supports_jit(model) is True
  model.compile(optimizer='sgd', loss='mse', jit_compile=True)
  assert model.jit_compile is True
  assert sizes.size_tracker(model) is not None


def test_xla_graph_has_static_shapes_and_tf_graph_stays_dynamic():
  layer = diffstride.DiffStride(strides=(2.0, 2.5),
                                data_format='channels_last')
  x = _random((2, 32, 32, 3))
  layer.build(x.shape)
  sizes.update_sizes(layer)
  shapes = {}

  def probe(name):
    def fn(x):
      y = layer(x)
      shapes[name] = tuple(y.shape)
      return y
    return fn

  xla = tf.function(probe('xla'), jit_compile=True)(x)
  graph = tf.function(probe('graph'))(x)
  assert shapes['xla'] == (2, 24, 22, 3)
  assert shapes['graph'] == (2, None, None, 3)  # Dynamic, exact, as before.
  np.testing.assert_allclose(xla, graph, rtol=1e-5, atol=1e-6)


def _feature_model():
  inputs = keras.Input((32, 32, 3))
  y = keras.layers.Conv2D(4, 3, padding='same')(inputs)
  y = diffstride.DiffStride(strides=(2.0, 2.5), data_format='channels_last',
                            name='ds')(y)
  y = keras.layers.Conv2D(2, 3, padding='same')(y)
  return keras.Model(inputs, y)


@pytest.mark.parametrize('jit', (False, True), ids=['graph', 'xla'])
def test_export_of_a_trained_model_has_static_spatial_shapes(tmp_path, jit):
  keras.utils.set_random_seed(0)
  model = _feature_model()
  tracker = sizes.track_sizes(model)
  model.compile(optimizer=keras.optimizers.Adam(0.1), loss='mse',
                jit_compile=jit)
  x = _random((4, 32, 32, 3), seed=1)
  target = np.zeros((4, 24, 22, 2), np.float32)
  model.fit(x, target, batch_size=4, epochs=1, verbose=0)
  layer = model.get_layer('ds')
  layer.strides.assign([2.9, 1.6])  # As if trained far from the start.
  expected = model(x).numpy()
  assert tracker is sizes.size_tracker(model)
  path = str(tmp_path / 'exported')
  model.export(path, verbose=False)
  restored = tf.saved_model.load(path)
  out_shape = tuple(restored.signatures['serving_default']
                    .structured_outputs['output_0'].shape)
  assert out_shape == (None,) + expected.shape[1:]  # Static h', w'.
  assert expected.shape[1:3] == diffstride.diffstride_output_size(
      32, 32, (2.9, 1.6))
  for batch in (4, 1):
    np.testing.assert_allclose(restored.serve(x[:batch]), expected[:batch],
                               rtol=1e-5, atol=1e-6)


def test_export_of_an_untracked_model_stays_dynamic(tmp_path):
  model = _feature_model()
  x = _random((2, 32, 32, 3), seed=2)
  path = str(tmp_path / 'exported')
  model.export(path, verbose=False)
  restored = tf.saved_model.load(path)
  out_shape = tuple(restored.signatures['serving_default']
                    .structured_outputs['output_0'].shape)
  assert out_shape == (None, None, None, 2)
  np.testing.assert_allclose(restored.serve(x), model(x), rtol=1e-5,
                             atol=1e-6)


def test_exported_static_graph_refuses_other_strides():
  """A static-shape graph outside XLA (what an export serves) raises if its
  strides no longer give the sizes it was traced with."""
  layer = diffstride.DiffStride(strides=(2.0, 2.0),
                                data_format='channels_last')
  x = _random((1, 32, 32, 2), seed=3)
  layer.build(x.shape)
  sizes.update_sizes(layer)
  with sizes.static_shapes():
    forward = tf.function(layer)
    assert forward(x).shape == (1, 24, 24, 2)
  layer.strides.assign([2.7, 2.0])
  with pytest.raises(tf.errors.InvalidArgumentError, match='update_sizes'):
    forward(x)


def test_load_model_takes_sizes_from_the_loaded_strides(tmp_path):
  keras.utils.set_random_seed(0)
  model = _feature_model()
  model.get_layer('ds').strides.assign([3.1, 1.4])
  path = str(tmp_path / 'm.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  layer = loaded.get_layer('ds')
  expected = diffstride.diffstride_output_size(32, 32, (3.1, 1.4))
  assert layer.output_size((32, 32)) == expected
  assert expected != diffstride.diffstride_output_size(32, 32, (2.0, 2.5))
  sizes.track_sizes(loaded)
  loaded.compile(loss='mse', jit_compile=True)
  x = _random((2, 32, 32, 3), seed=4)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model(x),
                             rtol=1e-5, atol=1e-6)


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
    from keras import ops
    import diffstride
    from diffstride import sizes

    STEPS = 10
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 32, 32, 3)).astype('float32')
    T = np.zeros((8, 1), 'float32')

    def build(strategy):
      keras.utils.set_random_seed(0)
      with strategy.scope():
        inputs = keras.Input((32, 32, 3))
        y = keras.layers.Conv2D(3, 3, padding='same')(inputs)
        layer = diffstride.DiffStride(strides=(2.1, 2.6),
                                      data_format='channels_last', name='ds')
        y = keras.layers.Conv2D(4, 3, padding='same')(layer(y))
        energy = keras.layers.Lambda(
            lambda t: ops.mean(ops.square(t), axis=(1, 2, 3))[:, None])(y)
        model = keras.Model(inputs, energy)
        optimizer = keras.optimizers.Adam(0.1)
      return model, layer, optimizer

    def fit(strategy):
      model, layer, optimizer = build(strategy)
      tracker = sizes.track_sizes(model)
      with strategy.scope():
        model.compile(optimizer=optimizer, loss='mse', jit_compile=False)
      strides, losses = [], []

      class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
          losses.append(float(logs['loss']))
          strides.append(layer.strides.numpy().tolist())

      model.fit(X, T, batch_size=8, epochs=STEPS, verbose=0, shuffle=False,
                callbacks=[Record()])
      return dict(strides=strides, losses=losses)

    def custom_xla_loop(strategy):
      """Each replica's forward and backward pass compiled by XLA with the
      sizes as a static argument; gradients summed by the optimizer."""
      model, layer, optimizer = build(strategy)
      with strategy.scope():
        optimizer.build(model.trainable_variables)
      replicas = strategy.num_replicas_in_sync
      traces = []

      @tf.function(jit_compile=True)
      def grads_fn(x, t, sizes_key):
        traces.append(sizes_key)
        with tf.GradientTape() as tape:
          loss = tf.reduce_mean(tf.square(model(x) - t))
          scaled = loss / replicas  # The optimizer sums over replicas.
        grads = tape.gradient(scaled, model.trainable_variables)
        return loss, grads

      @tf.function
      def step(x, t, sizes_key):
        def replica_step(x, t):
          loss, grads = grads_fn(x, t, sizes_key)
          optimizer.apply(grads, model.trainable_variables)
          return loss
        losses = strategy.run(replica_step, args=(x, t))
        return strategy.reduce('MEAN', losses, axis=None)

      data = strategy.experimental_distribute_dataset(
          tf.data.Dataset.from_tensor_slices((X, T)).batch(8))
      strides, losses, keys = [], [], []
      for _ in range(STEPS):
        x, t = next(iter(data))
        key = sizes.update_sizes(model)
        keys.append(repr(key))
        losses.append(float(step(x, t, key)))
        strides.append(layer.strides.numpy().tolist())
      changes = sum(a != b for a, b in zip(keys[:-1], keys[1:]))
      return dict(strides=strides, losses=losses, size_changes=changes,
                  distinct_sizes=len(set(keys)),
                  replicas=replicas, traces=len(traces))

    mirrored = tf.distribute.MirroredStrategy(devices)
    print(json.dumps(dict(
        single=fit(tf.distribute.get_strategy()),
        mirrored=fit(mirrored),
        mirrored_xla=custom_xla_loop(mirrored))))
''')


@pytest.mark.slow
def test_mirrored_strategy():
  """MirroredStrategy over two CPUs: fit (Keras cannot jit_compile fit under
  MirroredStrategy, with or without DiffStride: variables on another device),
  and a custom loop whose per-replica step is compiled by XLA with the sizes
  as a static argument. Both give the single-device strides and losses."""
  result = subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT],
                          capture_output=True, text=True, timeout=900,
                          check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                                   KERAS_BACKEND='tensorflow'))
  assert result.returncode == 0, result.stderr[-5000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  single = runs['single']
  for name in ('mirrored', 'mirrored_xla'):
    np.testing.assert_allclose(runs[name]['strides'], single['strides'],
                               rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(runs[name]['losses'], single['losses'],
                               rtol=1e-3, atol=1e-6, err_msg=name)
  xla = runs['mirrored_xla']
  assert xla['replicas'] == 2
  assert xla['size_changes'] >= 1
  # One XLA trace per replica and per distinct sizes.
  assert xla['traces'] == 2 * xla['distinct_sizes']


def test_resnet_xla_step_equals_graph_step():
  """The ResNet with DiffStride: one XLA training step and one graph step
  from the same weights give the same loss and stride updates."""
  results = []
  for jit in (False, True):
    keras.utils.set_random_seed(0)
    model = resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                          kernel_size=3, channels_first=False,
                          num_output_classes=3,
                          pooling_cls=pooling.DiffStride)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), jit_compile=jit)
    x = _random((4, 32, 32, 3), seed=5)
    y = np.array([0, 1, 2, 0])
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    results.append((losses, [l.strides.numpy().copy() for l in
                             diffstride.diffstride_layers(model)]))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4)
  for a, b in zip(results[1][1], results[0][1]):
    np.testing.assert_allclose(a, b, rtol=1e-5)
