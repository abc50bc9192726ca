"""The harness's training step: Keras' step, a non-finite check, a policy.

`install(model)` gives the model the step `fit` runs in the harness: Keras'
own training step (forward pass, loss, gradients, update, metrics; see
`keras_internals`) of the TensorFlow backend (`tf_train_step.py`) or of the
JAX backend (below), with one addition, a check of the loss and
of every gradient before the update. When any is NaN or Inf, the step
changes nothing: no weight or optimizer-slot update (momentum, Adam moments),
and the BatchNorm moving statistics the forward pass already changed are put
back. The batch still counts as a step (`optimizer.iterations` advances, so
resuming and learning-rate schedules stay in step with the data), the
epoch's mean loss leaves it out (on JAX every metric leaves it out), and the
logs get `skipped_steps` (per
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
every worker skips the same steps; under `keras.distribution` on JAX the
arrays are global, so it is one decision.

With a `LossScaleOptimizer` (mixed_float16), Keras already skips steps whose
scaled gradients overflow and lowers the loss scale: that is its normal
operation, not a fault, so there only the loss itself is checked here.
"""

import math
from typing import Optional

from absl import logging
import keras

from diffstride.experiments import keras_internals

POLICIES = ('stop', 'skip')

SKIPPED_STEPS = 'skipped_steps'


def install(model: keras.Model) -> keras.metrics.Metric:
  """Makes `model.fit` run the harness's step (see the module docstring).

  Call after `model.compile` and inside the strategy scope, if any. Replaces
  the model instance's `train_step`; the model's config, weights and saved
  files do not change. On the TensorFlow and JAX backends (Keras' torch
  trainer is not supported: `ValueError`).

  Returns:
    The metric counting skipped steps in the current epoch (logged as
    `skipped_steps`); `NonFinitePolicy` resets it at each epoch.
  """
  if getattr(model, 'optimizer', None) is None:
    raise ValueError('train_step.install needs a compiled model.')
  backend = keras.backend.backend()
  if backend not in _STEPS:
    raise ValueError(f'train_step.install: the harness\'s step exists for '
                     f'the {" and ".join(_STEPS)} backends, not {backend}.')
  skipped = keras.metrics.Sum(name=SKIPPED_STEPS)
  keras_internals.replace_train_step(model, _STEPS[backend](model, skipped))
  return skipped


def _jax_step(model: keras.Model, skipped: keras.metrics.Metric):
  """The step of Keras' JAX trainer, `step(state, data) -> (logs, state)`,
  with the check. The state is functional: a skipped step returns the state
  it was given (weights, BatchNorm statistics, optimizer slots, every
  metric) except for the optimizer's step count, one more, and the skip
  counter. Under `keras.distribution` the arrays are global, so `ok` is the
  same on every device."""
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  # The counter must be in the state the step is given and returns: one of
  # the model's metrics (not saved with it).
  keras_internals.add_model_metric(model, skipped)
  loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  optimizer = model.optimizer
  grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)

  def step(state, data):
    trainable, non_trainable, optimizer_values, metric_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    (_, aux), grads = grad_fn(trainable, non_trainable, metric_values, x, y,
                              sample_weight, training=True,
                              optimizer_variables=optimizer_values)
    loss, y_pred, new_non_trainable, new_metric_values = aux
    ok = all_finite([loss] if loss_scaled else [loss] + list(grads))
    new_trainable, new_optimizer_values = optimizer.stateless_apply(
        optimizer_values, grads, trainable)
    _, new_metric_values = keras_internals.update_metrics_values(
        model, new_metric_values, loss, x, y, y_pred, sample_weight)

    def keep(new, old):
      return [keras.ops.where(ok, n, o) for n, o in zip(new, old)]

    trainable = keep(new_trainable, trainable)
    non_trainable = keep(new_non_trainable, non_trainable)
    steps = _index_of(optimizer.variables, optimizer.iterations)
    counted = list(optimizer_values)
    counted[steps] = optimizer_values[steps] + 1
    optimizer_values = keep(new_optimizer_values, counted)
    metric_values = keep(new_metric_values, metric_values)
    # Count the step if skipped, and read every metric (the logs).
    mapping = list(zip(model.metrics_variables, metric_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
      skipped.update_state(1.0 - keras.ops.cast(ok, 'float32'))
      logs = model.get_metrics_result()
    metric_values = [scope.get_current_value(v)
                     for v in model.metrics_variables]
    return logs, (trainable, non_trainable, optimizer_values, metric_values)

  return step


def _tensorflow_step(model: keras.Model, skipped: keras.metrics.Metric):
  from diffstride.experiments import tf_train_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return tf_train_step.make_step(model, skipped, all_finite, SKIPPED_STEPS)


_STEPS = {'tensorflow': _tensorflow_step, 'jax': _jax_step}


def all_finite(tensors):
  """True when every element of every tensor (None skipped) is finite."""
  flags = [keras.ops.all(keras.ops.isfinite(t)) for t in tensors
           if t is not None]
  if not flags:
    return keras.ops.convert_to_tensor(True)
  return keras.ops.all(keras.ops.stack(flags))


def _index_of(variables, variable) -> int:
  return next(i for i, v in enumerate(variables) if v is variable)


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
