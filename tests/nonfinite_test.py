"""Skipping (or stopping at) training steps with a NaN/Inf loss or gradient."""

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

import diffstride
from diffstride.experiments import train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(optimizer):
  """Conv, BatchNorm (moving statistics), DiffStride (strides), Dense."""
  model = keras.Sequential([
      keras.Input((16, 16, 3)),
      keras.layers.Conv2D(4, 3, padding='same'),
      keras.layers.BatchNormalization(),
      keras.layers.ReLU(),
      diffstride.DiffStride(strides=(2.0, 2.0), data_format='channels_last'),
      keras.layers.Conv2D(4, 3, padding='same', activation='relu'),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3),
  ])
  model.compile(optimizer, keras.losses.CategoricalCrossentropy(
      from_logits=True))
  return model


def _data(poisoned_batch=None, batches=4, batch_size=8):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batches * batch_size, 16, 16, 3)).astype('float32')
  y = keras.utils.to_categorical(rng.integers(0, 3, len(x)), 3)
  if poisoned_batch is not None:
    x[poisoned_batch * batch_size + 1, 3, 3, 0] = np.nan
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


class _Record(keras.callbacks.Callback):
  """Model weights, optimizer variables and logs after every batch."""

  def __init__(self):
    super().__init__()
    self.after = []

  def on_train_batch_end(self, batch, logs=None):
    self.after.append(
        ([w.numpy().copy() for w in self.model.weights],
         {v.path: v.numpy().copy() for v in self.model.optimizer.variables},
         dict(logs or {})))


def test_without_faults_the_step_equals_keras_own():
  """The replacement step is Keras' step plus a check: same weights."""
  results = []
  for skip in (False, True):
    keras.utils.set_random_seed(1)
    model = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    if skip:
      train_step.checked_train_step(model)
    history = model.fit(_data(), epochs=2, verbose=0)
    results.append(([w.numpy() for w in model.weights],
                    history.history['loss']))
  (w_keras, loss_keras), (w_skip, loss_skip) = results
  for a, b in zip(w_keras, w_skip):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_keras, loss_skip, rtol=1e-5)


# Runs in a fresh process: two logical CPUs must be configured before
# TensorFlow starts, which this pytest process has already done.
_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, {tests!r})
    import nonfinite_test as t
    from diffstride.experiments import distribute, train_step

    name = {strategy!r}
    if name == 'mirrored':
      strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    elif name == 'multi_worker':  # One local worker: the no-merge_call path.
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
      distribute._patch_keras_multi_worker_reduction()
    else:
      strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    data = t._data(poisoned_batch=1)
    with strategy.scope():
      model = t._model(keras.optimizers.Adam(0.01))
      skipped = train_step.checked_train_step(model)
      distribute.prepare_for_fit(model, strategy, data.element_spec)
    record = t._Record()
    guard = train_step.NonFiniteGuard('/tmp', skipped, 'skip')
    history = model.fit(data, epochs=2, verbose=0, callbacks=[guard, record])
    (w0, o0, _), (w1, o1, logs1) = record.after[:2]
    print(json.dumps(dict(
        replicas=strategy.num_replicas_in_sync,
        weights_kept=all(np.array_equal(a, b) for a, b in zip(w0, w1)),
        slots_kept=all(np.array_equal(o0[k], o1[k]) for k in o0
                       if not k.endswith('iteration')),
        iterations=[float(o['adam/iteration']) for _, o, _ in record.after],
        logged_skips=[l['skipped_steps'] for _, _, l in record.after],
        loss_history=history.history['loss'],
        skipped_history=history.history['skipped_steps'],
        total=guard.total_skipped,
        finite=all(np.isfinite(w.numpy()).all() for w in model.weights))))
''')


@pytest.mark.parametrize('strategy', ['default', 'mirrored', 'multi_worker'])
def test_a_nan_batch_is_skipped_and_changes_nothing(strategy):
  script = _SCRIPT.format(tests=os.path.join(ROOT, 'tests'),
                          strategy=strategy)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  if strategy == 'mirrored':
    assert out['replicas'] == 2  # The NaN sample sits on the first replica.
  # The skipped step (batch 2 of epoch 1) left weights (and BatchNorm's
  # moving statistics, and the strides) and Adam's moments as they were.
  assert out['weights_kept'] and out['slots_kept']
  # It still counts as a step.
  assert out['iterations'] == [1, 2, 3, 4, 5, 6, 7, 8]
  # Epoch 1 logs one skipped step from batch 2 on; epoch 2 (same data)
  # another one.
  assert out['logged_skips'] == [0, 1, 1, 1, 0, 1, 1, 1]
  assert out['skipped_history'] == [1, 1] and out['total'] == 2
  assert all(np.isfinite(out['loss_history'])) and out['finite']


def test_many_skips_in_a_row_stop_the_run():
  model = _model(keras.optimizers.SGD(1e30))  # Every step diverges.
  skipped = train_step.checked_train_step(model)
  guard = train_step.NonFiniteGuard('/nowhere', skipped, 'skip',
                                   max_consecutive_skips=2)
  x = np.full((64, 16, 16, 3), np.inf, 'float32')
  y = keras.utils.to_categorical(np.zeros(64), 3)
  with pytest.raises(FloatingPointError, match=r'3 training steps in a row'):
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[guard])
  assert int(model.optimizer.iterations.numpy()) == 3


def test_stop_policy_stops_before_applying_the_bad_step():
  """A NaN pixel that ReLU later zeroes leaves the loss finite but makes the
  first layers' gradients NaN: Keras' own step writes NaN into the weights
  and goes on; the checked step stops, with the weights still good."""
  keras_model = _model(keras.optimizers.SGD(0.1))
  history = keras_model.fit(_data(poisoned_batch=1), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss']).all()
  assert not all(np.isfinite(w.numpy()).all() for w in keras_model.weights)

  model = _model(keras.optimizers.SGD(0.1))
  skipped = train_step.checked_train_step(model)
  with pytest.raises(FloatingPointError,
                     match=r'at step 2 \(epoch 1, batch 2\).*on_nonfinite'):
    model.fit(_data(poisoned_batch=1), epochs=1, verbose=0,
              callbacks=[train_step.NonFiniteGuard('/nowhere', skipped)])
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_without_the_checked_step_the_guard_watches_the_loss():
  model = _model(keras.optimizers.SGD(1e30))
  x = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype('float32')
  y = keras.utils.to_categorical(np.zeros(32), 3)
  with pytest.raises(FloatingPointError, match=r'loss became .* at step'):
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[train_step.NonFiniteGuard('/nowhere')])


def test_mixed_float16_checks_the_loss_and_leaves_overflow_to_keras():
  keras.mixed_precision.set_dtype_policy('mixed_float16')
  try:
    model = _model(keras.optimizers.SGD(0.1))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    skipped = train_step.checked_train_step(model)
    record = _Record()
    model.fit(_data(poisoned_batch=1), epochs=1, verbose=0,
              callbacks=[train_step.NonFiniteGuard('/nowhere', skipped, 'skip'),
                         record])
  finally:
    keras.mixed_precision.set_dtype_policy('float32')
  (w0, _, _), (w1, _, logs1) = record.after[:2]
  assert logs1['skipped_steps'] == 1
  assert all(np.array_equal(a, b) for a, b in zip(w0, w1))
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_unknown_policy_is_an_error():
  with pytest.raises(ValueError, match='policy'):
    train_step.NonFiniteGuard('/nowhere', policy='ignore')


def test_needs_a_compiled_model():
  with pytest.raises(ValueError, match='compiled'):
    train_step.checked_train_step(keras.Sequential([keras.layers.Dense(1)]))
