"""The harness's training step: Keras' step, a non-finite check, a policy.

`install(model)` gives the model the step `fit` runs in the harness: Keras'
own TensorFlow training step (forward pass, loss, gradients, update,
metrics; see `keras_internals`) with one addition, a check of the loss and
of every gradient before the update. When any is NaN or Inf, the step
changes nothing: no weight or optimizer-slot update (momentum, Adam moments),
and the BatchNorm moving statistics the forward pass already changed are put
back. The batch still counts as a step (`optimizer.iterations` advances, so
resuming and learning-rate schedules stay in step with the data), the
epoch's mean loss leaves it out, and the logs get `skipped_steps` (per
epoch). Checking the gradients matters: a NaN input pixel can be zeroed by a
ReLU further on, so the loss stays finite while the first layers' gradients
are NaN, and Keras' own step would silently write NaN into those weights.

`NonFinitePolicy`, a callback, then applies the policy chosen with
`train.on_nonfinite = 'stop' | 'skip'`:

- 'stop' (default): end `fit` at the first such step with an error naming
  the step and what to try. Nothing is written after the last good backup,
  so rerunning the same command resumes from it.
- 'skip': log the skipped step and go on, but stop after more than
  `train.max_consecutive_skips` skipped steps in a row: a model that only
  produces NaN is not going to recover by itself.

Under `tf.distribute` the decision is all-reduced, so every replica and
every worker skips the same steps.

With a `LossScaleOptimizer` (mixed_float16), Keras already skips steps whose
scaled gradients overflow and lowers the loss scale: that is its normal
operation, not a fault, so there only the loss itself is checked here.
"""

import math
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from diffstride.experiments import keras_internals

POLICIES = ('stop', 'skip')

SKIPPED_STEPS = 'skipped_steps'


def _all_finite(tensors) -> tf.Tensor:
  flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
           if t is not None]
  return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _agreed_ok(finite: tf.Tensor) -> tf.Tensor:
  """True when no replica (of any worker) saw a non-finite value."""
  bad = tf.cast(tf.logical_not(finite), tf.float32)
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
  return tf.equal(bad, 0.0)


def _restorable_state(model: keras.Model):
  """The floating-point non-trainable variables a forward pass may change
  (BatchNorm moving statistics); RNG seed states are integers and left."""
  return [v for v in model.non_trainable_variables
          if v.dtype in ('float16', 'bfloat16', 'float32', 'float64')]


def _apply_or_skip(optimizer, ok, grads, variables):
  """`optimizer.apply_gradients` if `ok`, else only advance its step count.

  `ok` is the same on every replica. Strategies that aggregate gradients
  with `merge_call` (MirroredStrategy) cannot have it inside a replica's
  `tf.cond`, so there the branch is taken in cross-replica context, as
  Keras' LossScaleOptimizer does.
  """

  # Both branches return nothing; their updates run as side effects.
  def skip():
    optimizer.iterations.assign_add(1)

  def apply_here():
    optimizer.apply_gradients(zip(grads, variables))

  if (tf.distribute.get_replica_context() is None or
      keras_internals.strategy_supports_no_merge_call()):
    tf.cond(ok, apply_here, skip)
    return

  def cross_replica(strategy, ok, grads):
    # Every replica holds the same (all-reduced) `ok`: take the first.
    first = strategy.experimental_local_results(ok)[0]

    def apply():
      strategy.extended.call_for_each_replica(
          lambda g: optimizer.apply_gradients(zip(g, variables)),
          args=(grads,))

    tf.cond(first, apply, skip)

  tf.distribute.get_replica_context().merge_call(cross_replica,
                                                 args=(ok, grads))


def _batch_size(x) -> tf.Tensor:
  """The number of examples in the model input `x`, as Keras' step has it."""
  return tf.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]


def install(model: keras.Model) -> keras.metrics.Metric:
  """Makes `model.fit` run the harness's step (see the module docstring).

  Call after `model.compile` and inside the strategy scope, if any. Replaces
  the model instance's `train_step`; the model's config, weights and saved
  files do not change.

  Returns:
    The metric counting skipped steps in the current epoch (logged as
    `skipped_steps`); `NonFinitePolicy` resets it at each epoch.
  """
  if getattr(model, 'optimizer', None) is None:
    raise ValueError('train_step.install needs a compiled model.')
  skipped = keras.metrics.Sum(name=SKIPPED_STEPS)
  loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

  def step(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    state = _restorable_state(model)
    before = [tf.identity(v.value) for v in state]
    with tf.GradientTape() as tape:
      y_pred = keras_internals.forward_for_training(model, x)
      loss = keras_internals.training_loss(model, x, y, y_pred, sample_weight)
      scaled_loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_weights
    grads = tape.gradient(scaled_loss, variables)
    finite = _all_finite([loss] if loss_scaled else [loss] + list(grads))
    ok = _agreed_ok(finite)

    # Put back what the forward pass changed (BatchNorm statistics) when the
    # step is skipped: an elementwise select, the same on every replica.
    for variable, value in zip(state, before):
      variable.assign(tf.where(ok, variable.value, value))

    keras_internals.track_loss(model, tf.where(ok, loss, tf.zeros_like(loss)),
                               tf.where(ok, _batch_size(x), 0))
    # Every replica counts every skipped step (`ok` is shared), and the
    # logs show the first replica's count; `skipped` is read only there.
    skipped.update_state(1.0 - tf.cast(ok, tf.float32))

    _apply_or_skip(model.optimizer, ok, grads, variables)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs[SKIPPED_STEPS] = skipped.result()
    return logs

  keras_internals.replace_train_step(model, step)
  return skipped


class NonFinitePolicy(keras.callbacks.Callback):
  """Stops or goes on after skipped steps (see the module docstring).

  Raising inside the batch hook ends `fit` before any epoch-end callback
  runs, so neither the backup nor the checkpoint is overwritten: the last
  good ones stay on disk.

  Args:
    workdir: the run's folder (named in the error message).
    skipped_steps: the metric `install` returned. Without it, only the
      logged loss is watched (for models trained with Keras' own step).
    policy: 'stop' or 'skip'.
    max_consecutive_skips: with 'skip', how many skipped steps in a row are
      tolerated.

  Attributes:
    total_skipped: skipped steps over every epoch this callback saw.
  """

  def __init__(self, workdir: str,
               skipped_steps: Optional[keras.metrics.Metric] = None,
               policy: str = 'stop', max_consecutive_skips: int = 10):
    super().__init__()
    if policy not in POLICIES:
      raise ValueError(f'policy must be one of {POLICIES}, got {policy!r}.')
    self._workdir = workdir
    self._skipped = skipped_steps
    self._max_consecutive = (int(max_consecutive_skips) if policy == 'skip'
                             else 0)
    self._policy = policy
    self._epoch = 0
    self._seen = 0
    self._consecutive = 0
    self.total_skipped = 0

  def _advice(self) -> str:
    return (f'Nothing was saved after the last good backup; it is in '
            f'{self._workdir}/backup and rerunning the same command resumes '
            'from there. Things to try: a lower learning rate '
            '(hparams.learning_rate.values / .base), gradient clipping '
            '(hparams.optimizer.clipnorm = 1.0), or a look at the input data '
            'for NaN/Inf.')

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    self._seen = 0
    if self._skipped is not None:
      self._skipped.reset_state()

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    step = int(self.model.optimizer.iterations.numpy())
    where = f'step {step} (epoch {self._epoch + 1}, batch {batch + 1})'
    loss = logs.get('loss')
    if (self._skipped is None and loss is not None and
        not math.isfinite(float(loss))):
      raise FloatingPointError(
          f'The training loss became {float(loss)} at {where}. '
          + self._advice())
    count = int(round(float(logs.get(SKIPPED_STEPS, 0.0))))
    if count > self._seen:
      self._consecutive += count - self._seen
      self.total_skipped += count - self._seen
      if self._policy == 'stop':
        raise FloatingPointError(
            f'The loss or a gradient was not finite at {where}; that step '
            'was not applied. ' + self._advice() + ' Or set '
            'train.on_nonfinite = "skip" to skip such steps and go on.')
      logging.warning('Skipped %s: the loss or a gradient was not finite '
                      '(%d skipped this epoch).', where, count)
    else:
      self._consecutive = 0
    self._seen = count
    if self._consecutive > self._max_consecutive:
      raise FloatingPointError(
          f'{self._consecutive} training steps in a row had a non-finite '
          f'loss or gradient (the last at {where}); more than '
          f'train.max_consecutive_skips = {self._max_consecutive}. '
          + self._advice())
