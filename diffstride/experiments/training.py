"""The training loop: a gin-configurable `train(workdir)` around `model.fit`.

What a run leaves in its workdir:

    config.gin             the parsed gin config (every binding given)
    operative_config.gin   the bindings actually used, with defaults
    tensorboard/           loss, accuracy, learning rate, throughput, every
                           DiffStride layer's strides (height and width), and
                           the complexity penalty (complexity/*)
    strides.jsonl          one line per epoch: every DiffStride layer's strides
                           and the complexity values
    backup/                keras.callbacks.BackupAndRestore state (double:
                           the previous backup is kept): rerunning the same
                           command after an interruption resumes at the step
                           of the last backup (see checkpointing.py)
    checkpoints/last.keras the model after the last finished epoch
    model.keras            the final model
    metrics.json           final test top-1 (and top-5 where it applies),
                           learned strides, parameter count, steps, wall time,
                           method, stride initialisation, complexity weight
                           and values (what `diffstride.experiments.report` reads),
                           and how many steps were skipped as non-finite

A step with a NaN/Inf loss or gradient is never applied: the run stops with an
error naming the step or, with `train.on_nonfinite = 'skip'`, goes on without
it (see `diffstride/experiments/train_step.py`).

The complexity regulariser (`train.complexity_weight = lambda`, form
`train.complexity_form`) adds lambda * `complexity.complexity_penalty` to the
training loss (see `diffstride/complexity.py`); 0 leaves it off.

Only the chief worker writes files when training on several workers.
"""

import json
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from diffstride.experiments import callbacks as callbacks_lib
from diffstride.experiments import checkpointing
from diffstride import complexity
from diffstride import methods
from diffstride.experiments.data import images as data
from diffstride.experiments import distribute
from diffstride.experiments import hparams
from diffstride.experiments import model_info
from diffstride.experiments import train_step as nonfinite
from diffstride import resnet


def _write_text(path: str, text: str):
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(text)


def _steps_per_epoch(train_ds: tf.data.Dataset, info, batch_size: int) -> int:
  cardinality = int(train_ds.cardinality())
  if cardinality > 0:
    return cardinality
  return max(math.ceil(info.num_train_examples / batch_size), 1)


def _batch_size(dataset: tf.data.Dataset, default: int) -> int:
  size = dataset.element_spec[0].shape[0]
  return int(size) if size is not None else default


def _check_train_args(*, epochs, label_smoothing, seed, mixed_precision,
                      max_steps_per_epoch, max_eval_steps, backup_every_steps,
                      log_every_steps, complexity_weight, on_nonfinite,
                      max_consecutive_skips):
  """Raises a ValueError naming the `train.*` binding that is wrong."""

  def whole(name, value, minimum, optional=False):
    if optional and value is None:
      return
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value < minimum):
      raise ValueError(f'train.{name} must be a whole number >= {minimum}'
                       f'{" or None" if optional else ""}, got {value!r}.')

  whole('epochs', epochs, 1)
  whole('seed', seed, 0)
  whole('max_steps_per_epoch', max_steps_per_epoch, 1, optional=True)
  whole('max_eval_steps', max_eval_steps, 1, optional=True)
  whole('backup_every_steps', backup_every_steps, 1, optional=True)
  whole('log_every_steps', log_every_steps, 1)
  whole('max_consecutive_skips', max_consecutive_skips, 0)
  if on_nonfinite not in nonfinite.POLICIES:
    raise ValueError(f'train.on_nonfinite must be one of '
                     f'{nonfinite.POLICIES}, got {on_nonfinite!r}.')
  for name, value, low, high in (('label_smoothing', label_smoothing, 0, 1),
                                 ('complexity_weight', complexity_weight, 0,
                                  float('inf'))):
    if (not isinstance(value, (int, float, np.number))
        or isinstance(value, bool) or not low <= value < high):
      raise ValueError(f'train.{name} must be a number in [{low}, {high}), '
                       f'got {value!r}.')
  policies = (None, 'float32', 'mixed_float16', 'mixed_bfloat16')
  if mixed_precision not in policies:
    raise ValueError(f'train.mixed_precision must be one of {policies}, got '
                     f'{mixed_precision!r}.')


@gin.configurable(denylist=['dry_run'])
def train(workdir: str = gin.REQUIRED,
          model_fn: Callable[..., keras.Model] = resnet.resnet18,
          dataset_fn: Callable[..., Any] = data.image_datasets,
          info_fn: Callable[[], Any] = data.dataset_info,
          epochs: int = 400,
          label_smoothing: float = 0.0,
          seed: int = 0,
          mixed_precision: Optional[str] = None,
          jit_compile: Any = 'auto',
          max_steps_per_epoch: Optional[int] = None,
          max_eval_steps: Optional[int] = None,
          backup_every_steps: Optional[int] = None,
          log_every_steps: int = 50,
          verbose: Any = 'auto',
          complexity_weight: float = 0.0,
          complexity_form: str = 'paper',
          on_nonfinite: str = 'stop',
          max_consecutive_skips: int = 10,
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          dry_run: bool = False) -> Dict[str, Any]:
  """Trains `model_fn(num_output_classes=K)` on `dataset_fn(seed=seed)`.

  Args:
    workdir: where everything is written (see the module docstring).
    model_fn: builds the model; called as `model_fn(num_output_classes=K)`.
    dataset_fn: returns (train, test, info) as `data.image_datasets` does;
      `info.image_shape` is the shape of one model input (an image's
      (H, W, C), or (samples,) for waveforms).
    info_fn: returns the `data.DatasetInfo` that `dataset_fn` would, without
      reading data (used by `dry_run`).
    epochs: number of epochs.
    label_smoothing: of the categorical cross-entropy.
    seed: seeds Python, NumPy, TensorFlow and the data pipeline (passed to
      `dataset_fn` as `seed`). The tf.distribute strategy is chosen by
      binding `make_strategy.name`; the number of classes comes from the
      dataset and is passed to `model_fn`.
    mixed_precision: None, 'mixed_float16' or 'mixed_bfloat16'.
    jit_compile: passed to `model.compile` ('auto' lets Keras decide; it
      leaves XLA off for models with DiffStride).
    max_steps_per_epoch / max_eval_steps: cut epochs short (smoke tests).
    backup_every_steps: also back up mid-epoch every so many steps.
    log_every_steps: stride logging period in steps.
    verbose: `model.fit` verbosity ('auto': progress bar on a terminal).
    complexity_weight: lambda of the complexity regulariser (0: off); the
      loss gets lambda * `complexity.complexity_penalty(model, form)`.
    complexity_form: 'paper', 'compute' or 'memory' (see
      `diffstride/complexity.py`).
    on_nonfinite: what a NaN/Inf loss or gradient does. The step is never
      applied; then 'stop' ends the run with an error naming the step (the
      last backup stays intact), and 'skip' goes on (see
      `diffstride/experiments/train_step.py`), logging `skipped_steps`.
    max_consecutive_skips: with 'skip', stop after more skipped steps in a
      row than this.
    extra_callbacks: more Keras callbacks, run after the package's own.
    dry_run: build the model, print its summary and return, without data.

  Returns:
    The metrics written to metrics.json (empty for a dry run).
  """
  _check_train_args(epochs=epochs, label_smoothing=label_smoothing, seed=seed,
                    mixed_precision=mixed_precision,
                    max_steps_per_epoch=max_steps_per_epoch,
                    max_eval_steps=max_eval_steps,
                    backup_every_steps=backup_every_steps,
                    log_every_steps=log_every_steps,
                    complexity_weight=complexity_weight,
                    on_nonfinite=on_nonfinite,
                    max_consecutive_skips=max_consecutive_skips)
  start = time.time()
  keras.utils.set_random_seed(seed)
  if mixed_precision:
    keras.mixed_precision.set_dtype_policy(mixed_precision)
  dist = distribute.make_strategy()
  chief = distribute.is_chief(dist)
  if dry_run:
    info = info_fn()
    with dist.scope():
      model = model_fn(num_output_classes=info.num_classes)
      model.build((None,) + tuple(info.image_shape))
    model.summary()
    return {}

  tf.io.gfile.makedirs(workdir)
  if chief:
    _write_text(os.path.join(workdir, 'config.gin'), gin.config_str())
  train_ds, test_ds, info = dataset_fn(seed=seed)
  batch_size = _batch_size(train_ds, info.num_train_examples)
  if max_steps_per_epoch:
    train_ds = train_ds.take(max_steps_per_epoch)
  if max_eval_steps:
    test_ds = test_ds.take(max_eval_steps)
  steps_per_epoch = _steps_per_epoch(train_ds, info, batch_size)
  logging.info('Dataset %s: %d classes, images %s, %d steps per epoch of %d.',
               info.name, info.num_classes, info.image_shape, steps_per_epoch,
               batch_size)

  with dist.scope():
    model = model_fn(num_output_classes=info.num_classes)
    model.build((None,) + tuple(info.image_shape))
    metrics = [keras.metrics.CategoricalAccuracy(name='top1')]
    if info.num_classes > 5:
      metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name='top5'))
    model.compile(
        optimizer=hparams.optimizer(hparams.learning_rate(steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing),
        metrics=metrics,
        jit_compile=jit_compile)
    if complexity_weight:
      complexity.attach_regularizer(model, complexity_weight, complexity_form)
    skipped_steps = nonfinite.checked_train_step(model)
    distribute.prepare_for_fit(model, dist, train_ds.element_spec)
  num_params = int(model.count_params())
  input_size = (tuple(info.image_shape[:2]) if len(info.image_shape) == 3
                else None)

  def complexity_fn():
    values = complexity.complexity_values(model, input_size)
    if values and values.get(complexity_form) is not None:
      values['weighted_penalty'] = complexity_weight * values[complexity_form]
    return values

  logging.info('Model: %d parameters, %d DiffStride layers.', num_params,
               len(methods.diffstride_layers(model)))

  # Every worker backs up (into a folder of its own, see
  # distribute.worker_backup_dir); only the chief writes the shared outputs.
  backup_dir = distribute.worker_backup_dir(os.path.join(workdir, 'backup'),
                                           dist)
  guard = nonfinite.NonFiniteGuard(workdir, skipped_steps, on_nonfinite,
                                  max_consecutive_skips)
  callbacks = [
      guard,
      checkpointing.backup_callback(backup_dir,
                                    backup_every_steps or 'epoch'),
  ]
  if chief:
    callbacks += [
        keras.callbacks.TensorBoard(os.path.join(workdir, 'tensorboard'),
                                    update_freq='epoch'),
        callbacks_lib.StrideAndThroughputLogger(
            os.path.join(workdir, 'tensorboard', 'train'),
            os.path.join(workdir, 'strides.jsonl'), batch_size,
            log_every_steps, complexity_fn),
        keras.callbacks.ModelCheckpoint(
            os.path.join(workdir, 'checkpoints', 'last.keras')),
    ]
  callbacks += list(extra_callbacks)
  # Resume where the last backup left off: finish its epoch on the batches
  # it had not reached, then the remaining epochs (see checkpointing.py).
  resume = checkpointing.resume_point(model, backup_dir, steps_per_epoch)
  fit = dict(validation_data=test_ds, callbacks=callbacks, verbose=verbose)
  epochs_run = 0
  first_full_epoch = resume.epoch
  if resume.batches_done and resume.epoch < epochs:
    partial = model.fit(train_ds.skip(resume.batches_done),
                        initial_epoch=resume.epoch, epochs=resume.epoch + 1,
                        **fit)
    epochs_run += len(partial.epoch)
    first_full_epoch += 1
  if first_full_epoch < epochs:
    epochs_run += len(model.fit(train_ds, initial_epoch=first_full_epoch,
                                epochs=epochs, **fit).epoch)
  results = model.evaluate(test_ds, return_dict=True, verbose=0)
  metrics_out = {
      'dataset': info.name,
      'num_classes': info.num_classes,
      'test_top1': float(results['top1']),
      'test_loss': float(results['loss']),
      'learned_strides': methods.learned_strides(model),
      'axis_names': list(model_info.stride_axes(model)),
      'method': model_info.method_key(model),
      'stride_init': model_info.stride_init(model),
      'complexity_weight': float(complexity_weight),
      'complexity_form': complexity_form,
      'complexity': complexity_fn(),
      'num_params': num_params,
      'epochs': epochs,
      'epochs_run_this_time': epochs_run,
      'steps': int(model.optimizer.iterations.numpy()),
      'steps_per_epoch': steps_per_epoch,
      'on_nonfinite': on_nonfinite,
      'skipped_steps_this_time': guard.total_skipped,
      'batch_size': batch_size,
      'wall_time_seconds': time.time() - start,
      'seed': seed,
      'strategy': type(dist).__name__,
      'num_replicas': dist.num_replicas_in_sync,
  }
  if 'top5' in results:
    metrics_out['test_top5'] = float(results['top5'])
  if chief:
    model.save(os.path.join(workdir, 'model.keras'))
    _write_text(os.path.join(workdir, 'operative_config.gin'),
                gin.operative_config_str())
    _write_text(os.path.join(workdir, 'metrics.json'),
                json.dumps(metrics_out, indent=2) + '\n')
  logging.info('Done: %s', json.dumps(metrics_out))
  return metrics_out
