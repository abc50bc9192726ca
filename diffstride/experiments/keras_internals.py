"""Every use of Keras internals by the experiment harness, in one place.

Written against Keras 3.15 (checked on 3.15.1) with the TensorFlow backend
(TensorFlow 2.21). Keras does not promise to keep any of what follows: after
a Keras upgrade, run `tests/training_test.py` (its `missing_internals()`
check names whatever is gone) and re-read the Keras sources cited below. The
rest of `diffstride/experiments/` reaches Keras only through its public API
and the small public functions of this module. (The core library's one
private use, `Layer._flatten_layers` in `diffstride/methods.py` and
`diffstride/recalibration.py`, is the core's own.)

What is touched, and why:

1. The TensorFlow trainer's training step, `TensorFlowTrainer.train_step`
   (keras/src/backend/tensorflow/trainer.py), which the harness's step
   (`train_step.py`) repeats with a non-finite check between the gradients
   and the update. Keras has no hook there, so the pieces of its step are
   used as Keras uses them:
   - `Layer._call_has_training_arg` (keras/src/layers/layer.py): whether the
     model's `call` takes `training` -> `forward_for_training`.
   - `Trainer._compute_loss` (keras/src/trainers/trainer.py): `compute_loss`
     with `training=True` when the model's `compute_loss` takes that argument
     (overrides written before Keras 3.3 do not) -> `training_loss`.
   - `Trainer._loss_tracker`, the `Mean` metric behind the logged `loss`, and
     `keras.src.losses.loss.unscale_loss_for_distribution`, which undoes the
     division of the loss by the number of replicas before it is tracked
     -> `track_loss` (the harness leaves skipped steps out of the mean).
   - `model.train_function`, the compiled step that `fit` caches on its
     first call (an undocumented attribute): it is reset when the step is
     replaced -> `replace_train_step`.
   On JAX the harness's step repeats `JAXTrainer.train_step`
   (keras/src/backend/jax/trainer.py) with the same check: it uses the public
   `compute_loss_and_updates` and `optimizer.stateless_apply`, and
   `JAXTrainer._update_metrics_variables` -> `update_metrics_values`.
   The skip counter is one of the model's metrics through
   `Layer._metrics` -> `add_model_metric`.
   Where Keras 3.15 has public equivalents, the step uses them
   (`keras.utils.unpack_x_y_sample_weight`, `keras.tree.flatten`).

2. A TensorFlow internal, used as Keras' own `LossScaleOptimizer` does
   (keras/src/optimizers/loss_scale_optimizer.py, `_tf_apply`):
   `tf.__internal__.distribute.strategy_supports_no_merge_call()`, whether
   the strategy aggregates gradients without `merge_call` (a conditional
   update must otherwise be taken in cross-replica context)
   -> `strategy_supports_no_merge_call`.

3. `fit` under `MultiWorkerMirroredStrategy`, which Keras 3 cannot do
   (keras-team/keras#20585; still so in 3.15):
   - every step, `keras.src.backend.tensorflow.trainer.reduce_per_replica`
     reduces the scalar logs with `strategy.reduce('MEAN', v, axis=0)`,
     which fails on scalars: the module function is replaced by one that
     reduces with `axis=None` under that strategy (and defers to Keras'
     otherwise) -> `patch_multi_worker_reduction`;
   - before training, `Trainer._maybe_symbolic_build` averages a real data
     batch across workers eagerly to learn the input shapes, which fails:
     the model instance's method is replaced by one that calls
     `Trainer._symbolic_build` with the dataset's element spec
     -> `build_from_element_spec`.

4. The files of `keras.callbacks.BackupAndRestore`
   (keras/src/callbacks/backup_and_restore.py), which `checkpointing.py`
   reads to resume at the backup's exact step: the weights in
   `latest.weights.h5`, the previous ones in `latest.weights.h5.bkp` with
   `double_checkpoint=True`, and `training_metadata.json` holding
   `{"epoch": e, "batch": b}`, the epoch `fit` restarts at
   -> `backup_weights_path`, `previous_backup_weights_path`,
   `backup_metadata_path`, `read_backup_epoch`, `write_backup_epoch`.
"""

import json
import os
from typing import Callable, List, Optional

import keras

from diffstride.experiments import files

KERAS_VERSION = '3.15'  # The version this module was written against.

# 1. The training step.


def forward_for_training(model: keras.Model, x):
  """`model(x, training=True)`, or `model(x)` if `call` has no `training`."""
  if model._call_has_training_arg:  # pylint: disable=protected-access
    return model(x, training=True)
  return model(x)


def training_loss(model: keras.Model, x, y, y_pred, sample_weight):
  """The training loss as Keras' step computes it (compiled loss, regular-
  isation and `add_loss` terms, scaled for the number of replicas)."""
  return model._compute_loss(  # pylint: disable=protected-access
      x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


def track_loss(model: keras.Model, loss, weight) -> None:
  """Adds `loss` (from `training_loss`) with `weight` to the logged `loss`.

  `weight` is the batch size as Keras' step gives it; 0 leaves the step out
  of the epoch's mean.
  """
  from keras.src.losses import loss as loss_module  # pylint: disable=g-import-not-at-top
  model._loss_tracker.update_state(  # pylint: disable=protected-access
      loss_module.unscale_loss_for_distribution(loss), sample_weight=weight)


def add_model_metric(model: keras.Model, metric: keras.metrics.Metric) -> None:
  """Makes `metric` one of `model.metrics` (reset by Keras at each epoch,
  logged by its step, and on JAX part of the training state), as a metric
  created in the model's `__init__` would be, but without becoming part of
  the model's config or saved files: appended to `Layer._metrics`."""
  model._metrics.append(metric)  # pylint: disable=protected-access


def update_metrics_values(model: keras.Model, metric_values, loss, x, y,
                          y_pred, sample_weight):
  """The JAX trainer's metric update (`JAXTrainer._update_metrics_variables`:
  the loss tracker and the compiled metrics), stateless: returns the logs
  and the new values of `model.metrics_variables`."""
  return model._update_metrics_variables(  # pylint: disable=protected-access
      metric_values, loss, x, y, y_pred, sample_weight)


def replace_train_step(model: keras.Model, step: Callable) -> None:
  """Makes `fit` run `step(data)` as the model's training step.

  Sets the instance's `train_step` (Keras' documented override point) and
  drops the compiled step `fit` may have cached, so the next `fit` traces
  `step`. The model's class, config and saved files do not change.
  """
  model.train_step = step
  model.train_function = None


# 2. The TensorFlow internal Keras' LossScaleOptimizer uses.


def strategy_supports_no_merge_call() -> bool:
  """True when the current strategy updates variables without `merge_call`
  (then a `tf.cond` around `apply_gradients` may run in replica context)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return bool(tf.__internal__.distribute.strategy_supports_no_merge_call())


# 3. `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585).

_PATCHED = '_diffstride_patched'


def patch_multi_worker_reduction() -> None:
  """Makes Keras reduce per-replica step outputs with `axis=None` under
  MultiWorkerMirroredStrategy (instead of `axis=0`, which fails on the
  scalar logs). Idempotent; other strategies keep Keras' reduction."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from keras.src.backend.tensorflow import trainer as tf_trainer  # pylint: disable=g-import-not-at-top
  original = tf_trainer.reduce_per_replica
  if getattr(original, _PATCHED, False):
    return

  def reduce_per_replica(values, strategy, reduction):
    if (reduction in ('auto', 'mean')
        and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)):
      return tf.nest.map_structure(
          lambda v: (strategy.reduce('MEAN', v, axis=None)
                     if isinstance(v, tf.distribute.DistributedValues) else v),
          values)
    return original(values, strategy, reduction)

  setattr(reduce_per_replica, _PATCHED, True)
  tf_trainer.reduce_per_replica = reduce_per_replica


def build_from_element_spec(model: keras.Model,
                            strategy,
                            element_spec) -> None:
  """Makes `fit` / `evaluate` build the model's losses and metrics from the
  dataset's `element_spec` instead of a data batch averaged across workers
  (see 3. above). Call after `model.compile`."""

  def symbolic_build(iterator=None, data_batch=None):
    del iterator, data_batch
    with strategy.scope():
      model._symbolic_build(data_batch=tuple(element_spec))  # pylint: disable=protected-access

  model._maybe_symbolic_build = symbolic_build  # pylint: disable=protected-access


# 4. The files of BackupAndRestore.

_BACKUP_WEIGHTS = 'latest.weights.h5'
_BACKUP_METADATA = 'training_metadata.json'


def backup_weights_path(backup_dir: str) -> str:
  """The weights (and optimizer state) of the newest backup."""
  return os.path.join(backup_dir, _BACKUP_WEIGHTS)


def previous_backup_weights_path(backup_dir: str) -> str:
  """The previous backup's weights, kept with `double_checkpoint=True`."""
  return backup_weights_path(backup_dir) + '.bkp'


def backup_metadata_path(backup_dir: str) -> str:
  """The JSON file naming the epoch (and batch) of the newest backup."""
  return os.path.join(backup_dir, _BACKUP_METADATA)


def read_backup_epoch(backup_dir: str) -> Optional[int]:
  """The number of epochs the newest backup had finished, or None without
  a metadata file."""
  path = backup_metadata_path(backup_dir)
  if not files.exists(path):
    return None
  with files.open_file(path) as f:
    return int(json.loads(f.read() or '{}').get('epoch', 0))


def write_backup_epoch(backup_dir: str, epoch: int) -> None:
  """Makes the next `fit` with BackupAndRestore start at `epoch` (0-based),
  at its first batch."""
  with files.open_file(backup_metadata_path(backup_dir), 'w') as f:
    f.write(json.dumps({'epoch': int(epoch), 'batch': 0}))


# Checking a Keras version.


def missing_internals() -> List[str]:
  """The internals above that the installed Keras lacks (empty on 3.15).

  Checks that each private attribute, function and file name used here still
  exists where this module expects it; it cannot check their meaning.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from keras.src.backend.tensorflow import trainer as tf_trainer
  from keras.src.callbacks import backup_and_restore
  from keras.src.losses import loss as loss_module
  from keras.src.trainers import trainer as base_trainer
  # pylint: enable=g-import-not-at-top
  missing = []

  def need(ok, what):
    if not ok:
      missing.append(what)

  layer = keras.layers.Dense(1)
  need(hasattr(layer, '_call_has_training_arg'),
       'Layer._call_has_training_arg')
  need(hasattr(base_trainer.Trainer, '_compute_loss'), 'Trainer._compute_loss')
  need('_loss_tracker' in _init_source(base_trainer.Trainer),
       'Trainer._loss_tracker')
  need(hasattr(loss_module, 'unscale_loss_for_distribution'),
       'keras.src.losses.loss.unscale_loss_for_distribution')
  need('self.train_function = None' in _init_source(
      tf_trainer.TensorFlowTrainer), 'TensorFlowTrainer.train_function')
  need(hasattr(tf.__internal__.distribute, 'strategy_supports_no_merge_call'),
       'tf.__internal__.distribute.strategy_supports_no_merge_call')
  need(callable(getattr(tf_trainer, 'reduce_per_replica', None)),
       'keras.src.backend.tensorflow.trainer.reduce_per_replica')
  need(hasattr(tf_trainer.TensorFlowTrainer, '_maybe_symbolic_build'),
       'TensorFlowTrainer._maybe_symbolic_build')
  need(hasattr(base_trainer.Trainer, '_symbolic_build'),
       'Trainer._symbolic_build')
  need(isinstance(getattr(layer, '_metrics', None), list), 'Layer._metrics')
  try:
    from keras.src.backend.jax import trainer as jax_trainer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError:  # JAX not installed: its step is not used.
    jax_trainer = None
  if jax_trainer is not None:
    need(hasattr(jax_trainer.JAXTrainer, '_update_metrics_variables'),
         'JAXTrainer._update_metrics_variables')
  source = _source(backup_and_restore.BackupAndRestore)
  for name in (_BACKUP_WEIGHTS, _BACKUP_METADATA, '.bkp', '"epoch"'):
    need(name in source, f'BackupAndRestore file layout ({name})')
  return missing


def _source(obj) -> str:
  import inspect  # pylint: disable=g-import-not-at-top
  try:
    return inspect.getsource(obj)
  except (OSError, TypeError):
    return ''


def _init_source(cls) -> str:
  return _source(cls.__init__)
