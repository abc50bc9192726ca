"""Audio classifier: waveform -> log-mel frontend -> 2-D CNN over (time, mel).

`AudioClassifier` maps waveforms [B, N] to logits [B, K]:

  1. If N > `window_samples`, the waveform is cut into consecutive windows of
     `window_samples` (the last one zero-padded), [B, N] -> [B * k, W];
     training inputs are single windows (k = 1).
  2. `frontend` (a `frontend.MelFrontend`): [B * k, W] -> [B * k, T, M]
     log-mel filterbanks, T = ceil(W / hop) frames (100 for 1 s at 10 ms),
     M mel bands (40).
  3. A channel axis is added: [B * k, T, M, 1] is an "image" whose
     **height is time and width is frequency (mel)**, channels_last.
  4. `backbone` (e.g. `resnet.resnet18`, channels_last) maps it to logits
     [B * k, K]. Its downsampling layers get (time, frequency) stride pairs,
     so a `DiffStride` learns `strides = [time stride, frequency stride]`,
     i.e. what `training.learned_strides` reports as [height, width].
  5. The logits of a clip's windows are averaged, over the windows that are
     not entirely zero (zero windows are the padding of `padded_batch`;
     a clip whose windows are all zero averages them all): [B, K].

This is the whole-clip evaluation of LEAF and of the paper (average of the
predictions over consecutive 1 s windows) inside the model, so the training
loop needs nothing audio-specific.

`time_frequency_strides(model)` and the `TimeFrequencyStrideLogger` callback
report DiffStride strides under their time / frequency names.
"""

import json
import os
from typing import Any, Callable, Dict, Optional

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from diffstride import distribute
from diffstride import frontend as frontend_lib
from diffstride import pooling
from diffstride import resnet

_PACKAGE = 'diffstride'
# The spectrogram "image" layout: which axis of a 2-D stride is which.
STRIDE_AXES = ('time', 'frequency')  # (height, width)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AudioClassifier(keras.Model):
  """Waveforms [B, N] -> logits [B, num_output_classes] (see module doc).

  Args:
    backbone: a model mapping [B, T, M, 1] spectrograms (height = time,
      width = mel) to logits [B, K], e.g. `resnet.resnet18(...,
      channels_first=False)`; or its serialized config.
    frontend: a `MelFrontend` (default: LEAF's defaults) or its config.
    window_samples: the window (training crop) length W in samples; longer
      inputs are cut into consecutive windows whose logits are averaged.
  """

  def __init__(self, backbone, frontend=None, window_samples: int = 16000,
               **kwargs):
    super().__init__(**kwargs)
    if isinstance(backbone, dict):
      backbone = keras.saving.deserialize_keras_object(backbone)
    if frontend is None:
      frontend = frontend_lib.MelFrontend()
    elif isinstance(frontend, dict):
      frontend = keras.saving.deserialize_keras_object(frontend)
    if int(window_samples) < 1:
      raise ValueError(f'`window_samples` must be >= 1, got {window_samples}.')
    self.backbone = backbone
    self.frontend = frontend
    self.window_samples = int(window_samples)

  def _spectrogram_shape(self, batch=None):
    frames = self.frontend.num_frames(self.window_samples)
    return (batch, frames, self.frontend.num_mel_bins, 1)

  def build(self, input_shape):
    if len(input_shape) not in (2, 3):
      raise ValueError('AudioClassifier takes waveforms [B, N] or [B, N, 1], '
                       f'got shape {tuple(input_shape)}.')
    self.frontend.build((None, self.window_samples))
    if not self.backbone.built:
      self.backbone.build(self._spectrogram_shape())

  def compute_output_shape(self, input_shape):
    out = self.backbone.compute_output_shape(self._spectrogram_shape())
    return (input_shape[0],) + tuple(out[1:])

  def call(self, inputs, training=None):
    x = tf.cast(inputs, tf.float32)
    if x.shape.rank == 3:
      x = x[..., 0]
    window = self.window_samples
    batch = tf.shape(x)[0]
    # [B, N] -> [B, k, W]: consecutive windows, the last one zero-padded.
    windows = tf.signal.frame(x, window, window, pad_end=True)
    num_windows = tf.shape(windows)[1]
    flat = tf.reshape(windows, [-1, window])
    features = self.frontend(flat, training=training)  # [B k, T, M]
    logits = self.backbone(features[..., None], training=training)
    logits = tf.cast(logits, tf.float32)
    logits = tf.reshape(logits, [batch, num_windows, -1])
    valid = tf.cast(tf.reduce_any(tf.not_equal(windows, 0.0), axis=2),
                    tf.float32)  # [B, k]
    valid = tf.where(tf.reduce_sum(valid, axis=1, keepdims=True) > 0, valid,
                     tf.ones_like(valid))
    pooled = (tf.reduce_sum(logits * valid[..., None], axis=1)
              / tf.reduce_sum(valid, axis=1, keepdims=True))
    return tf.cast(pooled, self.compute_dtype)

  def get_config(self):
    return {
        'name': self.name,
        'trainable': self.trainable,
        'backbone': keras.saving.serialize_keras_object(self.backbone),
        'frontend': keras.saving.serialize_keras_object(self.frontend),
        'window_samples': self.window_samples,
    }

  @classmethod
  def from_config(cls, config):
    return cls(**config)


@gin.configurable(module=_PACKAGE)
def audio_classifier(num_output_classes: int,
                     backbone_fn: Callable[..., keras.Model] = resnet.resnet18,
                     frontend_fn: Callable[[], Any] = frontend_lib.mel_frontend,
                     window_seconds: float = 1.0) -> AudioClassifier:
  """An `AudioClassifier`: `frontend_fn()` then `backbone_fn(K)`.

  Bind it in gin as `train.model_fn = @audio_classifier`, and the backbone
  through its own configurable, e.g. `resnet18.pooling_cls = @DiffStride`,
  `resnet18.strides = [1, 1, (2, 2), (2, 2), (2, 2)]` ((time, frequency)
  pairs) and `resnet18.channels_first = False`.

  Args:
    num_output_classes: K (given by the training loop).
    backbone_fn: called as `backbone_fn(num_output_classes=K)`.
    frontend_fn: called without arguments; bind `mel_frontend.*`.
    window_seconds: window length, in seconds at the frontend's sample rate.
  """
  frontend = frontend_fn()
  window = int(round(window_seconds * frontend.sample_rate))
  backbone = backbone_fn(num_output_classes=num_output_classes)
  return AudioClassifier(backbone=backbone, frontend=frontend,
                         window_samples=window)


def time_frequency_strides(model: keras.Model) -> Dict[str, Dict[str, float]]:
  """{DiffStride layer name: {'time': s_t, 'frequency': s_f}} of a model whose
  spectrograms have height = time and width = frequency (AudioClassifier)."""
  result = {}
  for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
    if isinstance(layer, pooling.DiffStride):
      values = [float(v) for v in np.asarray(layer.strides.numpy())]
      values = values * 2 if len(values) == 1 else values
      result[layer.name] = dict(zip(STRIDE_AXES, values))
  return result


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
    if workdir and distribute.is_chief(self.model.distribute_strategy):
      self._writer = tf.summary.create_file_writer(
          os.path.join(workdir, 'tensorboard', 'time_frequency'))
    self._write(0, int(self.model.optimizer.iterations.numpy()))

  def on_epoch_end(self, epoch, logs=None):
    self._write(epoch + 1, int(self.model.optimizer.iterations.numpy()))

  def _write(self, epoch: int, step: int):
    strides = time_frequency_strides(self.model)
    self.history.append({'epoch': epoch, 'step': step, 'strides': strides})
    logging.info('Epoch %d: time / frequency strides %s', epoch,
                 {k: (round(v['time'], 3), round(v['frequency'], 3))
                  for k, v in strides.items()})
    if self._writer is None:
      return
    with self._writer.as_default(step=step), tf.summary.record_if(True):
      for name, pair in strides.items():
        for axis, value in pair.items():
          tf.summary.scalar(f'strides/{name}/{axis}', value)
    self._writer.flush()
    with tf.io.gfile.GFile(
        os.path.join(self._workdir, 'time_frequency_strides.jsonl'), 'a') as f:
      f.write(json.dumps(self.history[-1]) + '\n')
