"""The harness's training step on the TensorFlow backend (see `train_step`).

Keras' TensorFlow step, stateful: the forward pass and the gradients under a
`tf.GradientTape`, then the update, conditional on the check. Under
`tf.distribute` the check is all-reduced, so every replica and worker skips
the same steps, and the conditional update is taken where the strategy allows
it (`_apply_or_skip`).
"""

from typing import Callable

import keras
import tensorflow as tf

from diffstride.experiments import keras_internals


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


def make_step(model: keras.Model, skipped: keras.metrics.Metric,
              all_finite: Callable, logs_key: str):
  """The step of Keras' TensorFlow trainer, `step(data) -> logs`, with the
  check: the update, the BatchNorm statistics and the loss's mean are
  conditional on `ok`; the other metrics count the batch.

  Args:
    model: the compiled model.
    skipped: the skip counter, logged as `logs_key`.
    all_finite: `train_step.all_finite`.
    logs_key: the name of the count in the logs.
  """
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
    ok = _agreed_ok(all_finite([loss] if loss_scaled else [loss] + list(grads)))

    # Put back what the forward pass changed (BatchNorm statistics) when the
    # step is skipped: an elementwise select, the same on every replica.
    for variable, value in zip(state, before):
      variable.assign(tf.where(ok, variable.value, value))

    keras_internals.track_loss(model, tf.where(ok, loss, tf.zeros_like(loss)),
                               tf.where(ok, _batch_size(x), 0))
    # Every replica counts every skipped step (`ok` is shared), and the
    # logs show the first replica's count.
    skipped.update_state(1.0 - tf.cast(ok, tf.float32))
    _apply_or_skip(model.optimizer, ok, grads, variables)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    # (Not one of the model's metrics: read per replica, not summed.)
    logs[logs_key] = skipped.result()
    return logs

  return step
