"""Callbacks of the harness: strides, learning rate and throughput logs.

`StrideAndThroughputLogger` writes every DiffStride layer's strides, the
learning rate, the complexity values and the throughput to TensorBoard and to
`strides.jsonl`; `TimeFrequencyStrideLogger` logs audio models' strides under
their time / frequency names. `StatisticsBeforeValidation` keeps the
BatchNorm moving averages that a recalibration before validation replaces.
`EpochScalars` writes the epoch's losses and metrics to TensorBoard as Keras'
TensorBoard callback names them. `EpochLine` says one line per epoch
(`console.say`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import gin
import keras

from diffstride.experiments import files
from diffstride import audio_model
from diffstride import methods
from diffstride.experiments import console
from diffstride.experiments import distribute
from diffstride.experiments import summaries


class EpochLine(keras.callbacks.Callback):
  """One line per epoch: its number, the training and test loss and top-1,
  the learned strides and the epoch's wall time."""

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.time()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    parts = [f'epoch {epoch + 1}/{self.params.get("epochs", "?")}:']
    for prefix, name in (('', 'train'), ('val_', 'test')):
      if f'{prefix}loss' in logs:
        text = f'{name} loss {float(logs[prefix + "loss"]):.3f}'
        if f'{prefix}top1' in logs:
          text += f', top-1 {100 * float(logs[prefix + "top1"]):.1f}%'
        parts.append(text + ';')
    strides = methods.learned_strides(self.model)
    if strides:
      parts.append(f'strides {console.strides_text(strides)};')
    parts.append(f'{time.time() - getattr(self, "_start", time.time()):.0f} s')
    console.say(' '.join(parts))


class StrideAndThroughputLogger(keras.callbacks.Callback):
  """Logs strides, learning rate and throughput to TensorBoard and JSONL."""

  def __init__(self, logdir: str, jsonl_path: Optional[str],
               batch_size: int, every_steps: int = 50,
               complexity_fn: Optional[Callable[[], Dict[str, Any]]] = None):
    super().__init__()
    self._complexity_fn = complexity_fn
    self._writer = summaries.ScalarWriter(logdir)
    self._jsonl_path = jsonl_path
    self._batch_size = batch_size
    self._every = max(int(every_steps), 1)
    self._epoch_start = None
    self._epoch_steps = 0

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def _learning_rate(self) -> float:
    lr = self.model.optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))

  def _write_strides(self, step: int):
    values = {}
    for name, (s_h, s_w) in methods.learned_strides(self.model).items():
      values[f'strides/{name}/height'] = s_h
      values[f'strides/{name}/width'] = s_w
    values['learning_rate'] = self._learning_rate()
    for name, value in self._complexity().items():
      values[f'complexity/{name}'] = value
    self._writer.write(step, values)

  def _complexity(self) -> Dict[str, float]:
    """The scalar complexity values (penalty forms, weighted penalty, MACs)."""
    if self._complexity_fn is None:
      return {}
    return {k: float(v) for k, v in self._complexity_fn().items()
            if isinstance(v, float)}

  def on_train_begin(self, logs=None):
    self._write_strides(self._step())

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = time.perf_counter()
    self._epoch_steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self._epoch_steps += 1
    step = self._step()
    if step % self._every == 0:
      self._write_strides(step)

  def on_epoch_end(self, epoch, logs=None):
    step = self._step()
    seconds = time.perf_counter() - self._epoch_start
    throughput = self._epoch_steps * self._batch_size / max(seconds, 1e-9)
    self._write_strides(step)
    self._writer.write(step, {'throughput/examples_per_second': throughput})
    self._writer.flush()
    if self._jsonl_path:
      record = {'epoch': epoch + 1, 'step': step,
                'strides': methods.learned_strides(self.model),
                'learning_rate': self._learning_rate(),
                'examples_per_second': throughput,
                'complexity': self._complexity(),
                **{k: float(v) for k, v in (logs or {}).items()}}
      with files.open_file(self._jsonl_path, 'a') as f:
        f.write(json.dumps(record) + '\n')


class EpochScalars(keras.callbacks.Callback):
  """Each epoch's logs to TensorBoard, as Keras' TensorBoard callback
  names them: `<logdir>/train/epoch_<metric>` and, for the `val_` metrics,
  `<logdir>/validation/epoch_<metric>`, at step = the epoch (0-based).
  Written through `summaries.ScalarWriter`, so on every backend, with or
  without TensorFlow."""

  def __init__(self, logdir: str):
    super().__init__()
    self._logdir = logdir
    self._writers = {}

  def _writer(self, split: str) -> summaries.ScalarWriter:
    if split not in self._writers:
      self._writers[split] = summaries.ScalarWriter(
          os.path.join(self._logdir, split))
    return self._writers[split]

  def on_epoch_end(self, epoch, logs=None):
    logs = {k: float(v) for k, v in (logs or {}).items()}
    splits = {
        'train': {f'epoch_{k}': v for k, v in logs.items()
                  if not k.startswith('val_')},
        'validation': {f'epoch_{k[4:]}': v for k, v in logs.items()
                       if k.startswith('val_')}}
    for split, values in splits.items():
      if values:
        self._writer(split).write(epoch, values)
        self._writer(split).flush()

  def on_train_end(self, logs=None):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


class StatisticsBeforeValidation(keras.callbacks.Callback):
  """Keeps the model's moving statistics as each validation finds them.

  Placed just before a `recalibration.BatchNormRecalibration(...,
  before_validation=True)` in `fit`'s callbacks, it copies the BatchNorm
  moving averages that training produced before the recalibration replaces
  them; `restore()` puts the last copy back, e.g. to measure what the
  recalibration changed. What is copied: every floating-point non-trainable
  variable of the model (BatchNorm moving means and variances; between a
  validation and the end of `fit` nothing else changes them).
  """

  def __init__(self):
    super().__init__()
    self._saved: Optional[List[Tuple[Any, Any]]] = None

  def on_test_begin(self, logs=None):
    self._saved = [(v, v.numpy()) for v in self.model.non_trainable_variables
                   if v.dtype in ('float16', 'bfloat16', 'float32',
                                  'float64')]

  def restore(self) -> bool:
    """Puts back the copy of the last validation; False without one."""
    if self._saved is None:
      return False
    for variable, value in self._saved:
      variable.assign(value)
    return True


class TimeFrequencyStrideLogger(keras.callbacks.Callback):
  """Logs every DiffStride's time and frequency strides after each epoch.

  To the absl log, to TensorBoard as `strides/<layer>/time` and
  `strides/<layer>/frequency` under `<workdir>/tensorboard/time_frequency`,
  and as JSON lines in `<workdir>/time_frequency_strides.jsonl`. The workdir
  is `workdir`, else the gin binding `train.workdir` (which train.py sets);
  without one, or on a worker other than the chief, only the absl log is
  written. The final values are in `self.history[-1]`.
  """

  def __init__(self, workdir: Optional[str] = None):
    super().__init__()
    self._workdir = workdir
    self._writer = None
    self.history = []

  def _resolve_workdir(self) -> Optional[str]:
    if self._workdir:
      return self._workdir
    try:
      return gin.query_parameter('train.workdir')
    except ValueError:
      return None

  def on_train_begin(self, logs=None):
    workdir = self._resolve_workdir()
    self._workdir = workdir
    if workdir and distribute.is_chief(
        getattr(self.model, 'distribute_strategy', None)):
      self._writer = summaries.ScalarWriter(
          os.path.join(workdir, 'tensorboard', 'time_frequency'))
    self._write(0, int(self.model.optimizer.iterations.numpy()))

  def on_epoch_end(self, epoch, logs=None):
    self._write(epoch + 1, int(self.model.optimizer.iterations.numpy()))

  def _write(self, epoch: int, step: int):
    strides = audio_model.time_frequency_strides(self.model)
    self.history.append({'epoch': epoch, 'step': step, 'strides': strides})
    logging.info('Epoch %d: time / frequency strides %s', epoch,
                 {k: (round(v['time'], 3), round(v['frequency'], 3))
                  for k, v in strides.items()})
    if self._writer is None:
      return
    self._writer.write(step, {f'strides/{name}/{axis}': value
                              for name, pair in strides.items()
                              for axis, value in pair.items()})
    self._writer.flush()
    with files.open_file(
        os.path.join(self._workdir, 'time_frequency_strides.jsonl'), 'a') as f:
      f.write(json.dumps(self.history[-1]) + '\n')
