"""Log-mel filterbank frontend (in-graph, `tf.signal`) and SpecAugment masking.

`MelFrontend` turns waveforms into log-compressed mel filterbanks with the
defaults of LEAF's mel baseline (Zeghidour et al., ICLR 2021,
google-research/leaf-audio `MelFilterbanks`): 16 kHz audio, 25 ms Hann
windows (int(16000 * 25 // 1000) + 1 = 401 samples, as LEAF counts them;
`tf.signal.stft`'s default `hann_window(periodic=True)`, which for an odd
length is the symmetric window, 0.5 - 0.5 cos(2 pi n / 400)),
10 ms hop (160 samples), FFT of 512, the power spectrum, 40 mel bands from 60
to 7800 Hz (`tf.signal.linear_to_mel_weight_matrix`, HTK mel scale), then
log(x + 1e-5). Frames are taken with `pad_end=True`, so T samples give
ceil(T / hop) frames (16000 samples -> 100 frames).

With `spec_augment=True` the layer also masks, in training only, up to
`time_mask_count` bands of at most `time_mask_max_frames` consecutive frames
and `freq_mask_count` bands of at most `freq_mask_max_bins` consecutive mel
bins per example (SpecAugment, Park et al. 2019, without time warping; LEAF's
defaults 2 x 10 frames and 2 x 10 bins). Masked values are set to
`mask_value` (0, as in LEAF / lingvo).

No tensorflow-io: `tf.signal.stft` and `tf.signal.linear_to_mel_weight_matrix`
cover everything, and the layer is plain Keras (saves to .keras, gin-bindable
through `mel_frontend`).

Backends. On TensorFlow the STFT is `tf.signal.stft`. On JAX and PyTorch the
same numbers come from `keras.ops`: frames gathered with a constant index
matrix, the Hann-windowed real DFT of length `fft_length` as one matmul with a
constant [window, 2 (fft_length // 2 + 1)] matrix (same window, same padding,
same mel matrix; `tests/backends_test.py` compares the two).
"""

from typing import Optional

import keras
from keras import ops
import numpy as np
import tensorflow as tf

_PACKAGE = 'diffstride'


def window_length(sample_rate: int, window_ms: float) -> int:
  """Analysis window in samples, counted as LEAF does: sr * ms // 1000 + 1."""
  return int(sample_rate * window_ms // 1000 + 1)


def hop_length(sample_rate: int, hop_ms: float) -> int:
  """Hop in samples: sr * ms // 1000 (LEAF)."""
  return int(sample_rate * hop_ms // 1000)


def num_frames(num_samples: int, sample_rate: int = 16000,
               hop_ms: float = 10.0) -> int:
  """Frames the frontend gives for `num_samples`: ceil(T / hop)."""
  hop = hop_length(sample_rate, hop_ms)
  return -(-int(num_samples) // hop)


def spec_augment_masks(shape, time_mask_count: int, time_mask_max_frames: int,
                       freq_mask_count: int, freq_mask_max_bins: int,
                       seed) -> tf.Tensor:
  """A float32 keep-mask [B, T, F] (1 keep, 0 masked) of random bands.

  For each example, `time_mask_count` bands of width w ~ U{0..max_frames}
  starting at s ~ U{0..T - w} along time, and likewise along frequency.

  Args:
    shape: (B, T, F), ints or scalar int32 tensors.
    seed: a `keras.random.SeedGenerator` (or an int) for `keras.random`.
  """
  batch, frames, bins = shape

  def bands(count, max_width, size):
    if count <= 0 or max_width <= 0:
      return tf.zeros([batch, size], tf.bool)
    size_f = tf.cast(size, tf.float32)
    width = tf.floor(keras.random.uniform(
        [batch, count], 0.0, 1.0, seed=seed) * (max_width + 1))
    width = tf.minimum(width, size_f)
    start = tf.floor(keras.random.uniform([batch, count], 0.0, 1.0,
                                          seed=seed) * (size_f - width + 1))
    pos = tf.range(size, dtype=tf.float32)[None, None, :]
    inside = tf.logical_and(pos >= start[..., None],
                            pos < (start + width)[..., None])
    return tf.reduce_any(inside, axis=1)  # [B, size]

  time = bands(time_mask_count, time_mask_max_frames, frames)
  freq = bands(freq_mask_count, freq_mask_max_bins, bins)
  masked = tf.logical_or(time[:, :, None], freq[:, None, :])
  return 1.0 - tf.cast(masked, tf.float32)


def _spec_augment_masks_ops(shape, time_mask_count: int,
                            time_mask_max_frames: int, freq_mask_count: int,
                            freq_mask_max_bins: int, seed):
  """`spec_augment_masks` with `keras.ops` (JAX, PyTorch): static shape."""
  batch, frames, bins = (int(v) for v in shape)

  def bands(count, max_width, size):
    if count <= 0 or max_width <= 0:
      return ops.zeros((batch, size), 'bool')
    width = ops.floor(keras.random.uniform(
        (batch, count), 0.0, 1.0, seed=seed) * (max_width + 1))
    width = ops.minimum(width, float(size))
    start = ops.floor(keras.random.uniform((batch, count), 0.0, 1.0,
                                           seed=seed) * (size - width + 1))
    pos = ops.arange(size, dtype='float32')[None, None, :]
    inside = ops.logical_and(pos >= start[..., None],
                             pos < (start + width)[..., None])
    return ops.any(inside, axis=1)

  time = bands(time_mask_count, time_mask_max_frames, frames)
  freq = bands(freq_mask_count, freq_mask_max_bins, bins)
  masked = ops.logical_or(time[:, :, None], freq[:, None, :])
  return 1.0 - ops.cast(masked, 'float32')


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MelFrontend(keras.layers.Layer):
  """Waveforms to log-mel filterbanks, computed in-graph with `tf.signal`.

  Input: float waveforms [B, T] or [B, T, 1] at `sample_rate`.
  Output: float32 [B, ceil(T / hop), num_mel_bins]: time along axis 1, mel
  bands (low to high frequency) along axis 2.

  Args:
    sample_rate: of the input, in Hz.
    window_ms: analysis window (Hann, periodic) in ms; LEAF's count of
      samples, `window_length(sample_rate, window_ms)` (401 at 16 kHz, 25 ms).
    hop_ms: frame step in ms (160 samples at 16 kHz, 10 ms).
    fft_length: FFT size (>= the window length).
    num_mel_bins: mel bands.
    lower_edge_hertz, upper_edge_hertz: range of the mel filters.
    log_offset: added before the log: log(mel + log_offset).
    spec_augment: mask random time and frequency bands when training.
    time_mask_count, time_mask_max_frames, freq_mask_count,
    freq_mask_max_bins: SpecAugment's masks (see the module docstring).
    mask_value: value of masked entries.
    seed: seed of the SpecAugment masks (None: random).
  """

  def __init__(self,
               sample_rate: int = 16000,
               window_ms: float = 25.0,
               hop_ms: float = 10.0,
               fft_length: int = 512,
               num_mel_bins: int = 40,
               lower_edge_hertz: float = 60.0,
               upper_edge_hertz: float = 7800.0,
               log_offset: float = 1e-5,
               spec_augment: bool = False,
               time_mask_count: int = 2,
               time_mask_max_frames: int = 10,
               freq_mask_count: int = 2,
               freq_mask_max_bins: int = 10,
               mask_value: float = 0.0,
               seed: Optional[int] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.sample_rate = int(sample_rate)
    self.window_ms = float(window_ms)
    self.hop_ms = float(hop_ms)
    self.fft_length = int(fft_length)
    self.num_mel_bins = int(num_mel_bins)
    self.lower_edge_hertz = float(lower_edge_hertz)
    self.upper_edge_hertz = float(upper_edge_hertz)
    self.log_offset = float(log_offset)
    self.spec_augment = bool(spec_augment)
    self.time_mask_count = int(time_mask_count)
    self.time_mask_max_frames = int(time_mask_max_frames)
    self.freq_mask_count = int(freq_mask_count)
    self.freq_mask_max_bins = int(freq_mask_max_bins)
    self.mask_value = float(mask_value)
    self.seed = seed
    if self.sample_rate <= 0:
      raise ValueError(f'`sample_rate` must be > 0, got {sample_rate!r}.')
    self.window_length = window_length(self.sample_rate, self.window_ms)
    self.hop_length = hop_length(self.sample_rate, self.hop_ms)
    if self.hop_length < 1 or self.window_length < 2:
      raise ValueError(
          f'window_ms={window_ms} / hop_ms={hop_ms} give a window of '
          f'{self.window_length} and a hop of {self.hop_length} samples at '
          f'{self.sample_rate} Hz: both must be at least 1 (window 2).')
    if self.fft_length < self.window_length:
      raise ValueError(
          f'`fft_length` ({fft_length}) must be >= the window length '
          f'({self.window_length} samples for {window_ms} ms at '
          f'{self.sample_rate} Hz).')
    if self.num_mel_bins < 1:
      raise ValueError(f'`num_mel_bins` must be >= 1, got {num_mel_bins!r}.')
    if not 0.0 <= self.lower_edge_hertz < self.upper_edge_hertz <= (
        self.sample_rate / 2):
      raise ValueError(
          'Need 0 <= lower_edge_hertz < upper_edge_hertz <= sample_rate / 2, '
          f'got {lower_edge_hertz}, {upper_edge_hertz} at {sample_rate} Hz.')
    if self.log_offset <= 0:
      raise ValueError(f'`log_offset` must be > 0, got {log_offset!r}.')
    with tf.init_scope():  # Eager even if built inside a tf.function.
      self._mel_matrix = tf.signal.linear_to_mel_weight_matrix(
          num_mel_bins=self.num_mel_bins,
          num_spectrogram_bins=self.fft_length // 2 + 1,
          sample_rate=self.sample_rate,
          lower_edge_hertz=self.lower_edge_hertz,
          upper_edge_hertz=self.upper_edge_hertz,
          dtype=tf.float32).numpy()  # [fft_length // 2 + 1, num_mel_bins]
    self._seed_generator = (keras.random.SeedGenerator(seed)
                            if self.spec_augment else None)

  @property
  def mel_matrix(self) -> np.ndarray:
    """float32 [fft_length // 2 + 1, num_mel_bins]: the mel filters."""
    return self._mel_matrix

  def num_frames(self, num_samples: int) -> int:
    return -(-int(num_samples) // self.hop_length)

  def _dft_matrix(self) -> np.ndarray:
    """float32 [window, 2 * (fft_length // 2 + 1)]: the Hann window times the
    real DFT of length fft_length (cosines, then minus sines)."""
    matrix = getattr(self, '_dft_cache', None)
    if matrix is None:
      with tf.init_scope():
        window = tf.signal.hann_window(self.window_length, periodic=True,
                                       dtype=tf.float64).numpy()
      n = np.arange(self.window_length)
      k = np.arange(self.fft_length // 2 + 1)
      phase = 2.0 * np.pi * np.mod(np.outer(n, k), self.fft_length) / (
          self.fft_length)
      matrix = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1)
      matrix = (window[:, None] * matrix).astype(np.float32)
      object.__setattr__(self, '_dft_cache', matrix)
    return matrix

  def _call_ops(self, x, training):
    """The same features with `keras.ops` (JAX, PyTorch): static shapes."""
    if len(x.shape) == 3:
      if x.shape[-1] != 1:
        raise ValueError('MelFrontend takes mono waveforms [B, T] or '
                         f'[B, T, 1], got shape {x.shape}.')
      x = x[..., 0]
    if len(x.shape) != 2 or x.shape[1] is None:
      raise ValueError('MelFrontend takes waveforms [B, T] or [B, T, 1] of a '
                       f'static length here, got shape {x.shape}.')
    samples = int(x.shape[1])
    frames = self.num_frames(samples)
    padded = (frames - 1) * self.hop_length + self.window_length
    x = ops.pad(x, ((0, 0), (0, padded - samples)))
    index = (np.arange(frames)[:, None] * self.hop_length
             + np.arange(self.window_length)[None, :]).astype(np.int32)
    framed = ops.take(x, ops.convert_to_tensor(index), axis=1)  # [B, F, win]
    spectrum = ops.matmul(framed, ops.convert_to_tensor(self._dft_matrix()))
    bins = self.fft_length // 2 + 1
    power = ops.square(spectrum[..., :bins]) + ops.square(spectrum[..., bins:])
    mel = ops.matmul(power, ops.convert_to_tensor(self._mel_matrix))
    features = ops.log(mel + self.log_offset)
    if self.spec_augment and training:
      keep = _spec_augment_masks_ops(
          (features.shape[0], frames, self.num_mel_bins),
          self.time_mask_count, self.time_mask_max_frames,
          self.freq_mask_count, self.freq_mask_max_bins, self._seed_generator)
      features = keep * features + (1.0 - keep) * self.mask_value
    return features

  def call(self, inputs, training=None):
    if keras.backend.backend() != 'tensorflow':
      return self._call_ops(ops.cast(inputs, 'float32'), training)
    x = tf.cast(inputs, tf.float32)
    if x.shape.rank == 3:
      if x.shape[-1] != 1:
        raise ValueError('MelFrontend takes mono waveforms [B, T] or '
                         f'[B, T, 1], got shape {inputs.shape}.')
      x = x[..., 0]
    if x.shape.rank != 2:
      raise ValueError('MelFrontend takes waveforms [B, T] or [B, T, 1], got '
                       f'shape {inputs.shape}.')
    stft = tf.signal.stft(x, frame_length=self.window_length,
                          frame_step=self.hop_length,
                          fft_length=self.fft_length, pad_end=True)
    power = tf.math.square(tf.math.abs(stft))  # [B, frames, fft // 2 + 1]
    mel = tf.tensordot(power, tf.constant(self._mel_matrix), axes=1)
    mel.set_shape(power.shape[:-1].concatenate([self.num_mel_bins]))
    features = tf.math.log(mel + self.log_offset)
    if self.spec_augment and training:
      shape = tf.shape(features)
      keep = spec_augment_masks(
          (shape[0], shape[1], self.num_mel_bins), self.time_mask_count,
          self.time_mask_max_frames, self.freq_mask_count,
          self.freq_mask_max_bins, self._seed_generator)
      features = keep * features + (1.0 - keep) * self.mask_value
    return features

  def compute_output_shape(self, input_shape):
    frames = input_shape[1]
    if frames is not None:
      frames = self.num_frames(frames)
    return (input_shape[0], frames, self.num_mel_bins)

  def get_config(self):
    config = super().get_config()
    config.update(
        sample_rate=self.sample_rate, window_ms=self.window_ms,
        hop_ms=self.hop_ms, fft_length=self.fft_length,
        num_mel_bins=self.num_mel_bins,
        lower_edge_hertz=self.lower_edge_hertz,
        upper_edge_hertz=self.upper_edge_hertz, log_offset=self.log_offset,
        spec_augment=self.spec_augment,
        time_mask_count=self.time_mask_count,
        time_mask_max_frames=self.time_mask_max_frames,
        freq_mask_count=self.freq_mask_count,
        freq_mask_max_bins=self.freq_mask_max_bins,
        mask_value=self.mask_value, seed=self.seed)
    return config


def mel_frontend(sample_rate: int = 16000,
                 window_ms: float = 25.0,
                 hop_ms: float = 10.0,
                 fft_length: int = 512,
                 num_mel_bins: int = 40,
                 lower_edge_hertz: float = 60.0,
                 upper_edge_hertz: float = 7800.0,
                 log_offset: float = 1e-5,
                 spec_augment: bool = False,
                 time_mask_count: int = 2,
                 time_mask_max_frames: int = 10,
                 freq_mask_count: int = 2,
                 freq_mask_max_bins: int = 10,
                 mask_value: float = 0.0,
                 seed: Optional[int] = None) -> MelFrontend:
  """A `MelFrontend` from keyword arguments (gin binds them in the harness).

  E.g. `mel_frontend.num_mel_bins = 64`, `mel_frontend.spec_augment = True`.
  """
  return MelFrontend(
      sample_rate=sample_rate, window_ms=window_ms, hop_ms=hop_ms,
      fft_length=fft_length, num_mel_bins=num_mel_bins,
      lower_edge_hertz=lower_edge_hertz, upper_edge_hertz=upper_edge_hertz,
      log_offset=log_offset, spec_augment=spec_augment,
      time_mask_count=time_mask_count,
      time_mask_max_frames=time_mask_max_frames,
      freq_mask_count=freq_mask_count, freq_mask_max_bins=freq_mask_max_bins,
      mask_value=mask_value, seed=seed)
