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
     i.e. what `methods.learned_strides` reports as [height, width]
     (`AudioClassifier.stride_axes` names them).
  5. The logits of a clip's windows are averaged, over the windows that are
     not entirely zero (zero windows are the padding of `padded_batch`;
     a clip whose windows are all zero averages them all): [B, K].

This is the whole-clip evaluation of LEAF and of the paper (average of the
predictions over consecutive 1 s windows) inside the model, so the training
loop needs nothing audio-specific.

`time_frequency_strides(model)` reports DiffStride strides under their time /
frequency names (the harness's `TimeFrequencyStrideLogger` logs them).

One `keras.ops` computation on TensorFlow, JAX and PyTorch (the clip length
and the batch may be unknown while a TensorFlow graph is traced); the model
keeps its DiffStride sizes current in compiled training by itself
(`diffstride.sizes.track_sizes`).
"""

from typing import Any, Callable, Dict

import keras
from keras import ops

from diffstride import frontend as frontend_lib
from diffstride import methods
from diffstride import resnet
from diffstride import sizes as sizes_lib

_PACKAGE = 'diffstride'
# The spectrogram "image" layout: which axis of a 2-D stride is which.
STRIDE_AXES = ('time', 'frequency')  # (height, width)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AudioClassifier(keras.Model):
  """Waveforms [B, N] -> float32 logits [B, num_output_classes] (see module
  doc); float32 under mixed precision too.

  Args:
    backbone: a model mapping [B, T, M, 1] spectrograms (height = time,
      width = mel) to logits [B, K], e.g. `resnet.resnet18(...,
      channels_first=False)`; or its serialized config.
    frontend: a `MelFrontend` (default: LEAF's defaults) or its config.
    window_samples: the window (training crop) length W in samples; longer
      inputs are cut into consecutive windows whose logits are averaged.
  """

  # What the two axes of a backbone stride mean for this model.
  stride_axes = STRIDE_AXES

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
    sizes_lib.track_sizes(self)

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
    """Per-window logits, averaged over each clip's non-empty windows.

    Args:
      inputs: waveforms [B, N] or [B, N, 1] (B and N may be unknown while a
        TensorFlow graph is traced).
      training: passed to the frontend and the backbone.

    Returns:
      float32 logits [B, K] (under mixed precision too).
    """
    x = ops.cast(inputs, 'float32')
    if len(x.shape) == 3:
      x = x[..., 0]
    window = self.window_samples
    # [B, N] -> [B, k, W]: consecutive windows, the last one zero-padded.
    windows = frontend_lib.frame(x, window, window)
    num_windows = ops.shape(windows)[1]
    flat = ops.reshape(windows, (-1, window))  # [B k, W]
    features = self.frontend(flat, training=training)  # [B k, T, M]
    logits = self.backbone(ops.expand_dims(features, -1), training=training)
    logits = ops.cast(logits, 'float32')  # [B k, K]
    logits = ops.reshape(logits, (-1, num_windows, logits.shape[-1]))
    valid = ops.cast(ops.any(ops.not_equal(windows, 0.0), axis=2),
                     'float32')  # [B, k]
    valid = ops.where(ops.sum(valid, axis=1, keepdims=True) > 0, valid,
                      ops.ones_like(valid))
    return (ops.sum(logits * valid[..., None], axis=1)
            / ops.sum(valid, axis=1, keepdims=True))

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
  return {name: dict(zip(STRIDE_AXES, pair))
          for name, pair in methods.learned_strides(model).items()}
