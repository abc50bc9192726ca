"""The training loop: a gin-configurable `train(workdir)` around `model.fit`.

What a run leaves in its workdir:

    config.gin             the parsed gin config (every binding given)
    operative_config.gin   the bindings actually used, with defaults
    tensorboard/           loss, accuracy, learning rate, throughput, every
                           DiffStride layer's strides (height and width), and
                           the complexity penalty (complexity/*); with
                           BatchNorm recalibration, the test accuracy before
                           and after it (recalibration/*)
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
                           how many steps were skipped as non-finite, and
                           `shift_consistency` (below)

A step with a NaN/Inf loss or gradient is never applied: the run stops with an
error naming the step or, with `train.on_nonfinite = 'skip'`, goes on without
it (see `diffstride/experiments/train_step.py`).

The complexity regulariser (`train.complexity_weight = lambda`, form
`train.complexity_form`) adds lambda * `complexity.complexity_penalty` to the
training loss (see `diffstride/complexity.py`); 0 leaves it off.

BatchNorm recalibration (`train.recalibrate_batch_norm = 'end'` or
'every_epoch') recomputes every BatchNorm layer's moving statistics from
`train.recalibration_batches` training batches, all weights fixed (see
`diffstride/recalibration.py`): at the end of training, and with
'every_epoch' also before each validation. metrics.json then holds the test
metrics after it (`test_top1`, ...) and before it
(`test_top1_before_recalibration`, ...), and model.keras the recalibrated
model.

Shift consistency (`train.shift_consistency_max_shift`, 'auto' by default):
after the final evaluation, the fraction of test examples whose top-1 class
is the same for two random shifts of up to that many pixels (images) or
samples (waveforms), circular and crop-and-pad, is metrics.json's
`shift_consistency` entry (see `diffstride/experiments/consistency.py`);
'auto' is min(H, W) // 8 pixels (4 for 32 x 32) or 10 ms of audio; 0 or
None leaves it out.

`train.verbose = 'auto'` (the default) shows Keras' progress bar when the
output is a terminal, and one line per epoch otherwise (a log file;
`callbacks.EpochLine`). What the harness says goes through
`diffstride.experiments.console`: to standard output under train.py, to
absl's INFO log when `train` is called as a library.

Only the chief worker writes the workdir's files when training on several
workers (on JAX over several processes, process i > 0 writes the same files
into `workdir/process-<i>/`, see `distribute.outputs_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import gin
import keras
import numpy as np
from diffstride.experiments.optional import tf

from diffstride.experiments import files
from diffstride.experiments import callbacks as callbacks_lib
from diffstride.experiments import checkpointing
from diffstride.experiments import console
from diffstride.experiments import consistency
from diffstride import complexity
from diffstride import methods
from diffstride.experiments.data import images as data
from diffstride.experiments import distribute
from diffstride.experiments import hparams
from diffstride.experiments import model_info
from diffstride.experiments import rerun_guard
from diffstride.experiments import run_data
from diffstride.experiments import summaries
from diffstride.experiments import train_step
from diffstride import recalibration
from diffstride import resnet
from diffstride import sizes

# `train.recalibrate_batch_norm`, when not off (None or False): at the end of
# training, or also before each validation.
RECALIBRATION_MODES = ('end', 'every_epoch')

# The Keras backends `train` runs on (`KERAS_BACKEND`).
BACKENDS = ('tensorflow', 'jax')


def _write_text(path: str, text: str):
  with files.open_file(path, 'w') as f:
    f.write(text)


def _check_train_args(*, epochs, label_smoothing, seed, mixed_precision,
                      max_steps_per_epoch, max_eval_steps, backup_every_steps,
                      log_every_steps, complexity_weight, on_nonfinite,
                      max_consecutive_skips, recalibrate_batch_norm,
                      recalibration_batches):
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
  if on_nonfinite not in train_step.POLICIES:
    raise ValueError(f'train.on_nonfinite must be one of '
                     f'{train_step.POLICIES}, got {on_nonfinite!r}.')
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
  if not (recalibrate_batch_norm is None or recalibrate_batch_norm is False
          or recalibrate_batch_norm in RECALIBRATION_MODES):
    raise ValueError(f'train.recalibrate_batch_norm must be None, False or one '
                     f'of {RECALIBRATION_MODES}, got '
                     f'{recalibrate_batch_norm!r}.')
  whole('recalibration_batches', recalibration_batches, 1)


@gin.configurable(denylist=['dry_run', 'allow_config_change'])
def train(workdir: str = gin.REQUIRED,
          model_fn: Callable[..., keras.Model] = resnet.resnet18,
          dataset_fn: Callable[..., Any] = data.image_datasets,
          info_fn: Callable[[], Any] = data.dataset_info,
          epochs: int = 400,
          label_smoothing: float = 0.0,
          seed: int = 0,
          mixed_precision: Optional[str] = None,
          jit_compile: Any = 'auto',
          run_eagerly: bool = False,
          max_steps_per_epoch: Optional[int] = None,
          max_eval_steps: Optional[int] = None,
          backup_every_steps: Optional[int] = None,
          log_every_steps: int = 50,
          verbose: Any = 'auto',
          complexity_weight: float = 0.0,
          complexity_form: str = 'paper',
          on_nonfinite: str = 'stop',
          max_consecutive_skips: int = 10,
          recalibrate_batch_norm: Optional[str] = None,
          recalibration_batches: int = 50,
          shift_consistency_max_shift: Any = 'auto',
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          deterministic: bool = False,
          dry_run: bool = False,
          allow_config_change: bool = False) -> Dict[str, Any]:
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
    jit_compile: passed to `model.compile`. 'auto' lets Keras decide (off
      on CPU-only TensorFlow, on with a GPU or TPU); True compiles the steps
      with XLA, DiffStride's output sizes being static and kept current by
      the model (`diffstride.sizes`): metrics.json then counts the size
      changes and recompilations of the run.
    run_eagerly: run the training and evaluation steps eagerly, without
      tracing a graph (debugging; the configs' smoke tests, where tracing
      a ResNet-18 costs more than two steps).
    max_steps_per_epoch / max_eval_steps: cut epochs short (smoke tests).
    backup_every_steps: also back up mid-epoch every so many steps.
    log_every_steps: stride logging period in steps.
    verbose: `model.fit` verbosity; 'auto': a progress bar (1) when standard
      output is a terminal, else one line per epoch (2), so that a log file
      does not fill with progress-bar updates.
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
    recalibrate_batch_norm: None or False: off. 'end': recompute every
      BatchNorm layer's moving statistics from training batches at the end
      of training (`diffstride.recalibration`). 'every_epoch': also before
      each validation, so the logged validation metrics are those of the
      recalibrated model. metrics.json gets the test metrics before
      (`test_top1_before_recalibration`, ...: with the moving averages
      training left) and after (`test_top1`, ...) the final recalibration.
    recalibration_batches: training batches each recalibration reads (at
      most an epoch's).
    shift_consistency_max_shift: the largest shift (pixels or samples) of
      the final model's shift consistency on the test set (metrics.json's
      `shift_consistency`, see `diffstride/experiments/consistency.py`);
      'auto': min(H, W) // 8 pixels, or 10 ms of audio; 0 or None: off.
    extra_callbacks: more Keras callbacks, run after the package's own.
    deterministic: TensorFlow op determinism
      (`tf.config.experimental.enable_op_determinism`, for the rest of the
      process), so that two runs of the same config, and a run killed at any
      point and rerun, end with bit-identical weights, strides and metrics.
      Needs a `dataset_fn` whose train set has fixed epoch passes (the
      package's pipelines: `info.train_epochs`). Without it the data order
      and augmentation are still restored exactly on resume (where the
      pipeline has fixed passes), but TensorFlow's kernels may sum in
      another order (see docs/reliability.md).
    dry_run: build the model, print its summary and return, without data.
    allow_config_change: resume a run in `workdir` even if its operative
      config differs from the one saved with its backups (otherwise a
      `rerun_guard.ConfigChangedError` before anything is written).

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
                    max_consecutive_skips=max_consecutive_skips,
                    recalibrate_batch_norm=recalibrate_batch_norm,
                    recalibration_batches=recalibration_batches)
  start = time.time()
  strategy = _set_up(seed, mixed_precision)
  try:
    if dry_run:
      _dry_run(model_fn, info_fn, strategy)
      return {}
    _check_jit_compile(jit_compile, strategy)
    outputs = distribute.outputs_dir(workdir, strategy)
    datasets = run_data.load_data(
        dataset_fn, seed, max_steps_per_epoch, max_eval_steps, deterministic,
        process_share=distribute.process_share(strategy))
    distribute.input_is_sharded(strategy, run_data.is_process_share(datasets))
    if deterministic and keras.backend.backend() == 'tensorflow':
      # Once the data can give fixed passes. (XLA on a CPU, JAX's compiler,
      # sums in a fixed order already.)
      tf.config.experimental.enable_op_determinism()
    model, skipped_steps = _build_and_compile(
        model_fn, datasets, strategy, label_smoothing=label_smoothing,
        jit_compile=jit_compile, run_eagerly=run_eagerly,
        complexity_weight=complexity_weight, complexity_form=complexity_form)
    # Every worker backs up (into a folder of its own, see
    # distribute.worker_backup_dir); only the chief writes the workdir's
    # outputs (distribute.outputs_dir).
    backup_dir = distribute.worker_backup_dir(os.path.join(workdir, 'backup'),
                                             strategy)
    # The model and the data are built: the operative config is complete.
    # A rerun with another one stops here, before anything is written.
    config = gin.operative_config_str()
    config_changed = rerun_guard.check(backup_dir, config, allow_config_change)
    complexity_fn = _complexity_fn(model, datasets.info, complexity_weight,
                                   complexity_form)
    max_shift = consistency.resolve_max_shift(  # Checked before training.
        shift_consistency_max_shift, model, datasets.info.image_shape)
    policy = train_step.NonFinitePolicy(workdir, skipped_steps, on_nonfinite,
                                        max_consecutive_skips)
    recalibrator = _Recalibrator(recalibrate_batch_norm,
                                 datasets.recalibration_data(),
                                 recalibration_batches)
    # The backup to resume from (loaded into the model), or an error if none
    # can be read: before the workdir's first writes.
    resume = checkpointing.resume_point(model, backup_dir,
                                        datasets.steps_per_epoch)
    # Every setting checked: the workdir's first writes.
    if config_changed:
      console.say('The configuration changed (--allow_config_change): '
                  'resuming with the new one.')
    _start_workdir(workdir, outputs)
    rerun_guard.save(backup_dir, config)
    callbacks = _callbacks(
        outputs, datasets, policy, recalibrator, backup_dir=backup_dir,
        backup_every_steps=backup_every_steps, log_every_steps=log_every_steps,
        complexity_fn=complexity_fn, extra_callbacks=extra_callbacks,
        verbose=verbose)
    epochs_run = checkpointing.fit_with_resume(
        model, datasets, callbacks, resume, epochs=epochs,
        verbose=_fit_verbosity(verbose))
    evaluation = _final_evaluation(model, datasets.test, recalibrator)
    metrics = _metrics(
        model, datasets, evaluation, strategy, seed=seed, epochs=epochs,
        epochs_run=epochs_run, complexity_fn=complexity_fn,
        complexity_weight=complexity_weight, complexity_form=complexity_form,
        on_nonfinite=on_nonfinite, skipped_steps=policy.total_skipped,
        wall_time=time.time() - start)
    if max_shift:
      metrics['shift_consistency'] = consistency.shift_consistency(
          model, datasets.test, max_shift, seed=seed,
          local=distribute.is_multi_worker(strategy))
    if outputs:
      _write_outputs(outputs, model, metrics, evaluation)
    logging.info('Done: %s', json.dumps(metrics))
    return metrics
  finally:
    distribute.release(strategy)


def _set_up(seed: int, mixed_precision: Optional[str]) -> Any:
  """Checks the backend, seeds every generator, sets the precision policy,
  makes the strategy (`distribute.make_strategy`: the backend's own)."""
  backend = keras.backend.backend()
  if backend not in BACKENDS:
    raise ValueError(
        f'train runs on the {" and ".join(BACKENDS)} backends, not '
        f'KERAS_BACKEND={backend}: its training step (the non-finite check, '
        f'diffstride/experiments/train_step.py) is written for those two '
        f'trainers only. The diffstride layers themselves run on {backend}.')
  keras.utils.set_random_seed(seed)
  if mixed_precision:
    keras.mixed_precision.set_dtype_policy(mixed_precision)
  return distribute.make_strategy()


def _check_jit_compile(jit_compile, strategy):
  """Refuses XLA where Keras 3.15's fit cannot run it (before any output)."""
  if jit_compile not in (True, False, 'auto'):
    raise ValueError(f'train.jit_compile must be True, False or "auto", got '
                     f'{jit_compile!r}.')
  if isinstance(strategy, distribute.KerasDistribution):
    return  # JAX: always compiled (XLA), one device or several.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  if (jit_compile is not True or strategy.num_replicas_in_sync == 1
      or not isinstance(strategy, tf.distribute.MirroredStrategy)):
    return  # (XLA under MultiWorkerMirroredStrategy is untested.)
  if all('CPU' in d.upper() for d in strategy.extended.worker_devices):
    # Any model, with or without DiffStride, with or without Keras: TF 2.21
    # cannot run a replica's XLA-compiled step that updates the mirrored
    # variables over logical CPU devices (docs/reliability.md).
    raise ValueError(
        'train.jit_compile = True with a MirroredStrategy over several CPU '
        'devices: TensorFlow cannot run an XLA-compiled training step that '
        'updates mirrored variables there ("Trying to access resource ... '
        'located in device" another CPU; the same without Keras or '
        'DiffStride). Use train.jit_compile = False (or "auto") with '
        "make_strategy.name = 'mirrored' on CPUs.")


def _build_model(model_fn, info) -> keras.Model:
  """`model_fn`'s model for the dataset `info` describes, built."""
  model = model_fn(num_output_classes=info.num_classes)
  model.build((None,) + tuple(info.image_shape))
  return model


def _dry_run(model_fn, info_fn, strategy):
  """Builds the model from the dataset's description alone and prints its
  summary: no data is read, nothing is written."""
  info = info_fn()
  with strategy.scope():
    model = _build_model(model_fn, info)
  model.summary()


def _start_workdir(workdir: str, outputs: Optional[str]):
  """Creates the workdir, and writes the parsed gin config into this
  process's outputs folder (see `distribute.outputs_dir`)."""
  files.makedirs(workdir)
  if outputs:
    files.makedirs(outputs)
    _write_text(os.path.join(outputs, 'config.gin'), gin.config_str())


def _build_and_compile(model_fn, datasets: run_data.Datasets,
                       strategy, *,
                       label_smoothing: float, jit_compile: Any,
                       run_eagerly: bool, complexity_weight: float,
                       complexity_form: str
                       ) -> Tuple[keras.Model, keras.metrics.Metric]:
  """Builds and compiles the model under `strategy`, with the complexity
  regulariser (if any) and the harness's train step.

  Returns:
    The model and the metric counting its skipped steps (see
    `train_step.install`).
  """
  with strategy.scope():
    model = _build_model(model_fn, datasets.info)
    metrics = [keras.metrics.CategoricalAccuracy(name='top1')]
    if datasets.info.num_classes > 5:
      metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name='top5'))
    model.compile(
        optimizer=hparams.optimizer(
            hparams.learning_rate(datasets.steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing),
        metrics=metrics,
        jit_compile=jit_compile,
        run_eagerly=bool(run_eagerly))
    if complexity_weight:
      complexity.attach_regularizer(model, complexity_weight, complexity_form)
    skipped_steps = train_step.install(model)
    distribute.prepare_for_fit(model, strategy, datasets.train)
  key = model_info.method_key(model)
  label = methods.get(key).label if key in methods.keys() else key
  console.say(f'model: {type(model).__name__} with {label}, '
              f'{int(model.count_params()):,} parameters, '
              f'{len(methods.diffstride_layers(model))} DiffStride layers')
  return model, skipped_steps


def _complexity_fn(model: keras.Model, info, complexity_weight: float,
                   complexity_form: str) -> Callable[[], Dict[str, Any]]:
  """A function giving the model's current complexity values, with the
  weighted penalty the loss gets."""
  input_size = (tuple(info.image_shape[:2]) if len(info.image_shape) == 3
                else None)

  def complexity_fn():
    values = complexity.complexity_values(model, input_size)
    if values and values.get(complexity_form) is not None:
      values['weighted_penalty'] = complexity_weight * values[complexity_form]
    return values

  return complexity_fn


class _Recalibrator:
  """BatchNorm recalibration as `train.recalibrate_batch_norm` asks.

  `callbacks()` are those `fit` needs ('every_epoch': recalibrate before
  each validation, keeping the moving averages each validation found), and
  `recalibrate(model)` recalibrates after training. Does nothing when off.
  """

  def __init__(self, mode, train_ds: tf.data.Dataset, num_batches: int):
    self.mode = mode or None
    self._data = train_ds
    self._num_batches = num_batches
    self._moving_averages = None
    if self.mode == 'every_epoch':
      self._moving_averages = callbacks_lib.StatisticsBeforeValidation()

  def callbacks(self) -> List[keras.callbacks.Callback]:
    if self.mode != 'every_epoch':
      return []
    # The copy of the moving averages is taken first, then replaced.
    return [self._moving_averages,
            recalibration.BatchNormRecalibration(
                self._data, num_batches=self._num_batches,
                before_validation=True)]

  def restore_moving_averages(self):
    """Puts back the moving averages that training left, where a
    recalibration during `fit` replaced them."""
    if self._moving_averages is not None:
      self._moving_averages.restore()

  def recalibrate(self, model: keras.Model
                  ) -> recalibration.RecalibrationResult:
    """Recalibrates under the model's strategy (also under mixed precision:
    the statistics are computed and kept in float32)."""
    with distribute.model_scope(model):
      result = recalibration.recalibrate_batch_norm(
          model, self._data, num_batches=self._num_batches)
    logging.info('Recalibrated %d BatchNorm layers from %d training examples '
                 '(%d batches).', len(result.layers), result.num_examples,
                 result.num_batches)
    return result


def _callbacks(outputs: Optional[str], datasets: run_data.Datasets,
               policy: train_step.NonFinitePolicy, recalibrator: _Recalibrator,
               *, backup_dir: str, backup_every_steps: Optional[int],
               log_every_steps: int, complexity_fn,
               extra_callbacks, verbose: Any = 0
               ) -> List[keras.callbacks.Callback]:
  """The callbacks of `fit`: the non-finite policy, the backup, BatchNorm
  recalibration, and where this process writes outputs (`outputs`, see
  `distribute.outputs_dir`) the logs and the checkpoint; then
  `extra_callbacks`."""
  callbacks = [
      policy,
      checkpointing.backup_callback(backup_dir,
                                    backup_every_steps or 'epoch'),
  ]
  callbacks += recalibrator.callbacks()
  if outputs:
    callbacks += [
        callbacks_lib.EpochScalars(os.path.join(outputs, 'tensorboard')),
        callbacks_lib.StrideAndThroughputLogger(
            os.path.join(outputs, 'tensorboard', 'train'),
            os.path.join(outputs, 'strides.jsonl'), datasets.batch_size,
            log_every_steps, complexity_fn),
        keras.callbacks.ModelCheckpoint(
            os.path.join(outputs, 'checkpoints', 'last.keras')),
    ]
  if verbose == 'auto' and _fit_verbosity(verbose) == 0:
    callbacks.append(callbacks_lib.EpochLine())
  return callbacks + list(extra_callbacks)


def _fit_verbosity(verbose: Any) -> Any:
  """`train.verbose` for `fit`: 'auto' is Keras' progress bar (1) on a
  terminal, else nothing from Keras (0): `callbacks.EpochLine` says one line
  per epoch instead; other values are Keras' own."""
  if verbose != 'auto':
    return verbose
  try:
    terminal = sys.stdout.isatty()
  except (AttributeError, ValueError):  # Replaced or closed.
    terminal = False
  return 1 if terminal else 0


@dataclasses.dataclass(frozen=True)
class _Evaluation:
  """The final model's test metrics (`model.evaluate`'s names), and with
  BatchNorm recalibration those before it and what it did."""
  results: Dict[str, float]
  recalibration_mode: Optional[str] = None
  before_recalibration: Optional[Dict[str, float]] = None
  recalibrated: Optional[recalibration.RecalibrationResult] = None


def _evaluate(model: keras.Model, test_ds: tf.data.Dataset
              ) -> Dict[str, float]:
  results = model.evaluate(test_ds, return_dict=True, verbose=0)
  return {name: float(value) for name, value in results.items()
          if name != train_step.SKIPPED_STEPS}  # (a training metric)


def _final_evaluation(model: keras.Model, test_ds: tf.data.Dataset,
                      recalibrator: _Recalibrator) -> _Evaluation:
  """Evaluates the trained model on the test set; with recalibration on,
  before it (with the moving averages training left) and after it."""
  if recalibrator.mode is None:
    return _Evaluation(_evaluate(model, test_ds))
  recalibrator.restore_moving_averages()
  before = _evaluate(model, test_ds)
  result = recalibrator.recalibrate(model)
  return _Evaluation(_evaluate(model, test_ds), recalibrator.mode, before,
                     result)


def _metrics(model: keras.Model, datasets: run_data.Datasets,
             evaluation: _Evaluation,
             strategy, *, seed: int, epochs: int,
             epochs_run: int, complexity_fn, complexity_weight: float,
             complexity_form: str, on_nonfinite: str, skipped_steps: int,
             wall_time: float) -> Dict[str, Any]:
  """The run's metrics.json (see the module docstring)."""
  results = evaluation.results
  metrics = {
      'dataset': datasets.info.name,
      'num_classes': datasets.info.num_classes,
      'test_top1': results['top1'],
      'test_loss': results['loss'],
      'learned_strides': methods.learned_strides(model),
      'axis_names': list(model_info.stride_axes(model)),
      'method': model_info.method_key(model),
      'stride_init': model_info.stride_init(model),
      'complexity_weight': float(complexity_weight),
      'complexity_form': complexity_form,
      'complexity': complexity_fn(),
      'num_params': int(model.count_params()),
      'epochs': epochs,
      'epochs_run_this_time': epochs_run,
      'steps': int(model.optimizer.iterations.numpy()),
      'steps_per_epoch': datasets.steps_per_epoch,
      'on_nonfinite': on_nonfinite,
      'skipped_steps_this_time': skipped_steps,
      'batch_size': datasets.batch_size,
      'wall_time_seconds': wall_time,
      'seed': seed,
      'backend': keras.backend.backend(),
      'strategy': distribute.strategy_name(strategy),
      'num_replicas': strategy.num_replicas_in_sync,
  }
  if 'top5' in results:
    metrics['test_top5'] = results['top5']
  metrics['jit_compile'] = bool(model.jit_compile)
  tracker = sizes.size_tracker(model)
  if model.jit_compile and tracker is not None:
    # Compiled with static DiffStride sizes: how often they changed during
    # this run, and how often that rebuilt the train function.
    metrics['size_changes_this_time'] = tracker.size_changes
    metrics['recompilations_this_time'] = tracker.recompilations['train']
  if evaluation.recalibrated is not None:
    for name, value in evaluation.before_recalibration.items():
      metrics[f'test_{name}_before_recalibration'] = value
    metrics['recalibrate_batch_norm'] = evaluation.recalibration_mode
    metrics['recalibration_batches'] = evaluation.recalibrated.num_batches
    metrics['recalibration_examples'] = evaluation.recalibrated.num_examples
  return metrics


def _write_outputs(workdir: str, model: keras.Model, metrics: Dict[str, Any],
                   evaluation: _Evaluation):
  """Writes the final model, the operative config, the recalibration's
  TensorBoard scalars and, last, metrics.json (into this process's outputs
  folder, see `distribute.outputs_dir`)."""
  model.save(os.path.join(workdir, 'model.keras'))
  _write_text(os.path.join(workdir, 'operative_config.gin'),
              gin.operative_config_str())
  if evaluation.recalibrated is not None:
    writer = summaries.ScalarWriter(
        os.path.join(workdir, 'tensorboard', 'recalibration'))
    writer.write(metrics['steps'], {
        'recalibration/test_top1_before':
            evaluation.before_recalibration['top1'],
        'recalibration/test_top1_after': evaluation.results['top1']})
    writer.close()
  _write_text(os.path.join(workdir, 'metrics.json'),
              json.dumps(metrics, indent=2) + '\n')
