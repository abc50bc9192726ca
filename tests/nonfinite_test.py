"""Skipping (or stopping at) training steps with a NaN/Inf loss or gradient.

The poisoned batches here are non-finite by construction, the same on every
CPU: no test relies on what ReLU, max or min make of a NaN (that depends on
the CPU's kernels: ReLU(NaN) is 0 with some and NaN with others). A batch
either has a NaN label (its loss is NaN: products and sums with a NaN are NaN
in IEEE arithmetic), or a NaN pixel that the model's first layer drops with a
select (`tf.where`, defined for NaN), so that the loss stays finite while that
layer's gain gets a NaN gradient (see `_DropNonFinite`).
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

import diffstride
from diffstride.experiments import train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _DropNonFinite(keras.layers.Layer):
  """`gain * x`, with the non-finite pixels of `x` set to 0.

  The forward pass selects with `tf.where`, so its output, and the loss, are
  finite whatever the CPU. The gain's gradient is the sum of `upstream * x`
  where the select passed zero upstream gradient to the NaN pixel: 0 * NaN is
  NaN (IEEE multiplication, not a max), so that gradient is NaN. A finite
  loss with a non-finite gradient, as when some later layer drops a NaN.
  """

  def build(self, input_shape):
    self.gain = self.add_weight(shape=(), initializer='ones', name='gain')

  def call(self, x):
    return tf.where(tf.math.is_finite(x), x * self.gain, tf.zeros_like(x))


def _model(optimizer):
  """Gain, Conv, BatchNorm (moving statistics), DiffStride (strides), Dense."""
  model = keras.Sequential([
      keras.Input((16, 16, 3)),
      _DropNonFinite(),
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


def _gain(model):
  return float(model.layers[0].gain.numpy())


def _data(nan_pixel_batches=(), nan_label_batches=(), batches=4,
          batch_size=8):
  """Random images and labels; sample 1 of the given batches poisoned.

  nan_pixel_batches: a NaN pixel (finite loss, NaN gradient).
  nan_label_batches: a NaN label (NaN loss, NaN gradients).
  """
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batches * batch_size, 16, 16, 3)).astype('float32')
  y = keras.utils.to_categorical(rng.integers(0, 3, len(x)), 3)
  for batch in nan_pixel_batches:
    x[batch * batch_size + 1, 3, 3, 0] = np.nan
  for batch in nan_label_batches:
    y[batch * batch_size + 1, 0] = np.nan
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _weights(model):
  return {v.path: v.numpy().copy() for v in model.weights}


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class _Record(keras.callbacks.Callback):
  """Model weights, optimizer variables and logs after every batch."""

  def __init__(self):
    super().__init__()
    self.after = []

  def on_train_batch_end(self, batch, logs=None):
    self.after.append(
        (_weights(self.model),
         {v.path: v.numpy().copy() for v in self.model.optimizer.variables},
         dict(logs or {})))


def test_poisoned_batches_are_what_the_tests_assume():
  """On any CPU: a NaN pixel gives a finite loss and only the gain's gradient
  NaN; a NaN label gives a NaN loss."""
  model = _model(keras.optimizers.SGD(0.1))
  for data, loss_finite in ((_data(nan_pixel_batches=[0]), True),
                            (_data(nan_label_batches=[0]), False)):
    x, y = next(iter(data))
    with tf.GradientTape() as tape:
      loss = model.compute_loss(x, y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    assert bool(np.isfinite(loss.numpy())) == loss_finite
    finite = [bool(np.isfinite(g.numpy()).all()) for g in grads]
    if loss_finite:
      assert finite == [False] + [True] * (len(grads) - 1)
    else:  # The Dense bias' gradient sums the NaN sample's logit gradients.
      assert not finite[-1]


def test_without_faults_the_step_equals_keras_own():
  """The replacement step is Keras' step plus a check: same weights."""
  results = []
  for skip in (False, True):
    keras.utils.set_random_seed(1)
    model = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    if skip:
      train_step.install(model)
    history = model.fit(_data(), epochs=2, verbose=0)
    results.append(([w.numpy() for w in model.weights],
                    history.history['loss']))
  (w_keras, loss_keras), (w_skip, loss_skip) = results
  for a, b in zip(w_keras, w_skip):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_keras, loss_skip, rtol=1e-5)


def skip_two_epochs(strategy_name):
  """Two epochs of `fit` under `strategy_name` ('default', 'mirrored' over
  /cpu:0 and /cpu:1, or 'multi_worker', one local worker) with the 'skip'
  policy, on batches 2 (finite loss, NaN gradient) and 4 (NaN loss) of
  `_data` poisoned: what `assert_two_epochs_skipped_batches_2_and_4`
  reads."""
  from diffstride.experiments import distribute, keras_internals  # pylint: disable=g-import-not-at-top
  if strategy_name == 'mirrored':
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  elif strategy_name == 'multi_worker':  # On CPU, merge_call too.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras_internals.patch_multi_worker_reduction()
  else:
    strategy = tf.distribute.get_strategy()
  keras.utils.set_random_seed(0)
  data = _data(nan_pixel_batches=[1], nan_label_batches=[3])
  with strategy.scope():
    model = _model(keras.optimizers.Adam(0.01))
    skipped = train_step.install(model)
    distribute.prepare_for_fit(model, strategy, data)
  record = _Record()
  guard = train_step.NonFinitePolicy('/tmp', skipped, 'skip')
  history = model.fit(data, epochs=2, verbose=0, callbacks=[guard, record])

  def kept(before, after):
    (w0, o0, _), (w1, o1, _) = record.after[before], record.after[after]
    return dict(
        weights=_same(w0, w1),
        slots=all(np.array_equal(o0[k], o1[k]) for k in o0
                  if not k.endswith('iteration')))
  # Through JSON, as the subprocesses give it.
  return json.loads(json.dumps(dict(
      replicas=strategy.num_replicas_in_sync,
      kept=[kept(0, 1), kept(2, 3)],
      changed=[kept(1, 2), kept(3, 4)],
      # (The optimizer's name is 'adam', 'adam_1', ... after others in the
      # same process.)
      iterations=[float(next(v for k, v in o.items()
                             if k.endswith('/iteration')))
                  for _, o, _ in record.after],
      logged_skips=[l['skipped_steps'] for _, _, l in record.after],
      loss_history=history.history['loss'],
      skipped_history=history.history['skipped_steps'],
      total=guard.total_skipped,
      finite=all(np.isfinite(w.numpy()).all() for w in model.weights))))


# The distributed cases run in a fresh process: two logical CPUs must be
# configured before TensorFlow starts, which this pytest process has already
# done. The default strategy runs here.
_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {tests!r})
    import nonfinite_test
    print(json.dumps(nonfinite_test.skip_two_epochs({strategy!r})))
''')


@pytest.mark.parametrize('strategy', ['default', 'mirrored', 'multi_worker'])
def test_a_nan_batch_is_skipped_and_changes_nothing(strategy):
  if strategy == 'default':
    out = skip_two_epochs(strategy)
  else:
    script = _SCRIPT.format(tests=os.path.join(ROOT, 'tests'),
                            strategy=strategy)
    result = subprocess.run([sys.executable, '-c', script],
                            capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
  if strategy == 'mirrored':
    # The poisoned samples sit on the first replica; the second one's loss
    # and gradients are finite, and it skips too.
    assert out['replicas'] == 2
  assert_two_epochs_skipped_batches_2_and_4(out)


def assert_two_epochs_skipped_batches_2_and_4(out):
  """What two epochs over `_data(nan_pixel_batches=[1],
  nan_label_batches=[3])` with the 'skip' policy must give (also on JAX:
  tests/jax_training_test.py)."""
  # The skipped steps (batches 2 and 4 of each epoch) left weights (and
  # BatchNorm's moving statistics, and the strides) and Adam's moments as
  # they were; the good steps after them did change them.
  all_kept = dict(weights=True, slots=True)
  assert out['kept'] == [all_kept, all_kept]
  assert out['changed'] == [dict(weights=False, slots=False)] * 2
  # They still count as steps.
  assert out['iterations'] == [1, 2, 3, 4, 5, 6, 7, 8]
  # Each epoch (same data) logs the skipped steps so far: one from batch 2
  # on, two from batch 4 on.
  assert out['logged_skips'] == [0, 1, 1, 2, 0, 1, 1, 2]
  assert out['skipped_history'] == [2, 2] and out['total'] == 4
  # The epoch's mean loss leaves out the NaN loss of batch 4.
  assert all(np.isfinite(out['loss_history'])) and out['finite']


def test_many_skips_in_a_row_stop_the_run():
  model = _model(keras.optimizers.SGD(0.1))
  skipped = train_step.install(model)
  guard = train_step.NonFinitePolicy('/nowhere', skipped, 'skip',
                                   max_consecutive_skips=2)
  before = _weights(model)
  x = np.random.default_rng(0).normal(size=(64, 16, 16, 3)).astype('float32')
  y = np.full((64, 3), np.nan, 'float32')  # Every step's loss is NaN.
  with pytest.raises(FloatingPointError, match=r'3 training steps in a row'):
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[guard])
  assert int(model.optimizer.iterations.numpy()) == 3
  assert _same(_weights(model), before)  # No step was applied.


def test_stop_policy_stops_before_applying_the_bad_step():
  """A NaN pixel that the first layer drops leaves the loss finite but makes
  that layer's gradient NaN: Keras' own step writes NaN into the weights and
  goes on; the checked step stops, with the weights as the last good step
  left them."""
  keras_model = _model(keras.optimizers.SGD(0.1))
  # Two steps: once a weight is NaN, later losses depend on the CPU.
  history = keras_model.fit(_data(nan_pixel_batches=[1]).take(2), epochs=1,
                            verbose=0)
  assert np.isfinite(history.history['loss']).all()
  assert np.isnan(_gain(keras_model))

  model = _model(keras.optimizers.SGD(0.1))
  skipped = train_step.install(model)
  record = _Record()
  with pytest.raises(FloatingPointError,
                     match=r'at step 2 \(epoch 1, batch 2\).*on_nonfinite'):
    model.fit(_data(nan_pixel_batches=[1]), epochs=1, verbose=0,
              callbacks=[train_step.NonFinitePolicy('/nowhere', skipped),
                         record])
  assert len(record.after) == 1  # The guard stopped `fit` at batch 2.
  assert _same(_weights(model), record.after[0][0])
  assert _gain(model) != 1.0  # Step 1 was applied.


def test_without_the_checked_step_the_guard_watches_the_loss():
  model = _model(keras.optimizers.SGD(0.1))
  with pytest.raises(FloatingPointError,
                     match=r'loss became nan at step 2 \(epoch 1, batch 2\)'):
    model.fit(_data(nan_label_batches=[1]), epochs=3, verbose=0,
              callbacks=[train_step.NonFinitePolicy('/nowhere')])


def _fit_mixed_float16(data):
  keras.mixed_precision.set_dtype_policy('mixed_float16')
  try:
    model = _model(keras.optimizers.SGD(0.1))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    skipped = train_step.install(model)
    record = _Record()
    model.fit(data, epochs=1, verbose=0,
              callbacks=[train_step.NonFinitePolicy('/nowhere', skipped, 'skip'),
                         record])
  finally:
    keras.mixed_precision.set_dtype_policy('float32')
  return model, record


def test_mixed_float16_checks_the_loss_and_leaves_overflow_to_keras():
  # A NaN loss: the checked step skips it (BatchNorm statistics too).
  model, record = _fit_mixed_float16(_data(nan_label_batches=[1]))
  (w0, _, _), (w1, _, logs1) = record.after[:2]
  assert logs1['skipped_steps'] == 1
  assert _same(w0, w1)
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)

  # A finite loss with a NaN gradient: not counted here; the
  # LossScaleOptimizer skips the update and halves its loss scale.
  model, record = _fit_mixed_float16(_data(nan_pixel_batches=[1]))
  (w0, o0, _), (w1, o1, _) = record.after[:2]
  assert [logs['skipped_steps'] for _, _, logs in record.after] == [0] * 4
  trainable = {v.path for v in model.trainable_weights}
  assert _same({k: w0[k] for k in trainable}, {k: w1[k] for k in trainable})
  scale = 'loss_scale_optimizer/dynamic_scale'
  assert o1[scale] == o0[scale] / 2
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_unknown_policy_is_an_error():
  with pytest.raises(ValueError, match='policy'):
    train_step.NonFinitePolicy('/nowhere', policy='ignore')


def test_needs_a_compiled_model():
  with pytest.raises(ValueError, match='compiled'):
    train_step.install(keras.Sequential([keras.layers.Dense(1)]))
