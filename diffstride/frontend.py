"""Log-mel filterbank frontend and SpecAugment masking, in `keras.ops`.

`MelFrontend` turns waveforms into log-compressed mel filterbanks with the
defaults of LEAF's mel baseline (Zeghidour et al., ICLR 2021,
google-research/leaf-audio `MelFilterbanks`): 16 kHz audio, 25 ms Hann
windows (int(16000 * 25 // 1000) + 1 = 401 samples, as LEAF counts them;
`tf.signal.stft`'s default `hann_window(periodic=True)`, which for an odd
length is the symmetric window, 0.5 - 0.5 cos(2 pi n / 400)), 10 ms hop (160
samples), FFT of 512, the power spectrum, 40 mel bands from 60 to 7800 Hz
(HTK mel scale, as `tf.signal.linear_to_mel_weight_matrix`), then
log(x + 1e-5). Frames are taken as `tf.signal.stft(..., pad_end=True)` takes
them, so T samples give ceil(T / hop) frames (16000 samples -> 100 frames).

With `spec_augment=True` the layer also masks, in training only, up to
`time_mask_count` bands of at most `time_mask_max_frames` consecutive frames
and `freq_mask_count` bands of at most `freq_mask_max_bins` consecutive mel
bins per example (SpecAugment, Park et al. 2019, without time warping; LEAF's
defaults 2 x 10 frames and 2 x 10 bins). Masked values are set to
`mask_value` (0, as in LEAF / lingvo).

One computation on every Keras backend (TensorFlow, JAX, PyTorch; eager,
graphs, XLA), written in `keras.ops`; TensorFlow is not imported. The
constants (Hann window, mel matrix) are computed on the host with NumPy in
float32, in the order of operations of `tf.signal.hann_window` and
`tf.signal.linear_to_mel_weight_matrix`; only their transcendental functions
(cos, log) are evaluated in float64 and rounded, where TensorFlow's float32
kernels differ from the rounded value by an ulp or two (1.6e-5 at most in
the mel weights, which are <= 1). The STFT is the frames (a gather with an
index matrix), times the window, then `keras.ops.rfft` (on TensorFlow the
`tf.signal.rfft` that `tf.signal.stft` calls). The log-mel features agree
with `tf.signal`'s to 7e-6 with LEAF's defaults (absolute, in the log
domain: the relative error of the mel energies; tests/frontend_test.py).
The clip length and the batch may be unknown while a TensorFlow graph is
traced; on JAX and PyTorch shapes are concrete anyway.
"""

from typing import Optional, Sequence

import keras
from keras import ops
import numpy as np

_PACKAGE = 'diffstride'
# The HTK mel scale of tf.signal: mel = 1127 log(1 + f / 700).
_MEL_BREAK_FREQUENCY_HERTZ = 700.0
_MEL_HIGH_FREQUENCY_Q = 1127.0


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


def _linspace_float32(start, stop, num: int) -> np.ndarray:
  """`tf.linspace` in float32: start + i * ((stop - start) / (num - 1)) for
  0 < i < num - 1, and the two end points exactly. Shape [num]."""
  start, stop = np.float32(start), np.float32(stop)
  delta = (stop - start) / np.float32(max(num - 1, 1))
  inner = start + delta * np.arange(1, max(num - 1, 1), dtype=np.float32)
  return np.concatenate([[start], inner, [stop]]).astype(np.float32)[:num]


def hertz_to_mel(frequencies_hertz) -> np.ndarray:
  """HTK mel scale as tf.signal computes it in float32: 1127 log(1 + f / 700)
  (the log of the float32 sum 1 + f / 700, not log1p). Same shape."""
  ratio = np.asarray(frequencies_hertz, np.float32) / np.float32(
      _MEL_BREAK_FREQUENCY_HERTZ)
  log = np.log((np.float32(1.0) + ratio).astype(np.float64)).astype(
      np.float32)
  return np.float32(_MEL_HIGH_FREQUENCY_Q) * log


def mel_weight_matrix(num_mel_bins: int, num_spectrogram_bins: int,
                      sample_rate: float, lower_edge_hertz: float,
                      upper_edge_hertz: float) -> np.ndarray:
  """`tf.signal.linear_to_mel_weight_matrix` (float32) in NumPy.

  Triangular filters, linear in mel, between num_mel_bins + 2 band edges
  equally spaced in mel from `lower_edge_hertz` to `upper_edge_hertz`; the
  spectrogram bins are equally spaced from 0 to sample_rate / 2 and the DC
  bin gets no weight (HTK).

  Returns:
    float32 [num_spectrogram_bins, num_mel_bins].
  """
  nyquist = np.float32(sample_rate) / np.float32(2.0)
  bins_mel = hertz_to_mel(
      _linspace_float32(0.0, nyquist, num_spectrogram_bins)[1:])[:, None]
  edges = _linspace_float32(hertz_to_mel(lower_edge_hertz),
                            hertz_to_mel(upper_edge_hertz), num_mel_bins + 2)
  lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
  lower_slopes = (bins_mel - lower) / (center - lower)
  upper_slopes = (upper - bins_mel) / (upper - center)
  weights = np.maximum(np.float32(0.0), np.minimum(lower_slopes, upper_slopes))
  return np.pad(weights, [(1, 0), (0, 0)]).astype(np.float32)


def hann_window(length: int) -> np.ndarray:
  """`tf.signal.hann_window(length, periodic=True)` (float32) in NumPy.

  0.5 - 0.5 cos(2 pi n / N) with N = length for an even length and
  N = length - 1 (the symmetric window) for an odd one, as TensorFlow does.

  Returns:
    float32 [length].
  """
  if length == 1:
    return np.ones([1], np.float32)
  denominator = np.float32(length if length % 2 == 0 else length - 1)
  phase = np.float32(2 * np.pi) * np.arange(length, dtype=np.float32) / (
      denominator)
  cos = np.cos(phase.astype(np.float64)).astype(np.float32)
  return (np.float32(0.5) - np.float32(0.5) * cos).astype(np.float32)


def frame(x, frame_length: int, frame_step: int):
  """`tf.signal.frame(x, frame_length, frame_step, pad_end=True)` on axis 1.

  The length may be unknown while a TensorFlow graph is traced.

  Args:
    x: [B, T].
    frame_length: samples per frame.
    frame_step: hop between frames, in samples.

  Returns:
    [B, ceil(T / frame_step), frame_length]: frame i holds samples
    i * frame_step ... i * frame_step + frame_length - 1, zero past T.
  """
  length = ops.shape(x)[1]
  frames = (length + frame_step - 1) // frame_step
  # The last frame ends before T + frame_length - 1 (frames - 1 <=
  # (T - 1) / frame_step), so this static padding always suffices.
  x = ops.pad(x, ((0, 0), (0, frame_length - 1)))
  index = (ops.arange(frames, dtype='int32')[:, None] * frame_step
           + ops.arange(frame_length, dtype='int32')[None, :])
  return ops.take(x, index, axis=1)


def spec_augment_masks(shape: Sequence, time_mask_count: int,
                       time_mask_max_frames: int, freq_mask_count: int,
                       freq_mask_max_bins: int, seed):
  """A float32 keep-mask [B, T, F] (1 keep, 0 masked) of random bands.

  For each example, `time_mask_count` bands of width w ~ U{0..max_frames}
  (at most T) starting at s ~ U{0..T - w} along time, and likewise along
  frequency.

  Args:
    shape: (B, T, F): ints, or scalar int tensors for sizes unknown while a
      TensorFlow graph is traced.
    time_mask_count, time_mask_max_frames: time bands per example and their
      largest width in frames.
    freq_mask_count, freq_mask_max_bins: the same along frequency.
    seed: a `keras.random.SeedGenerator` (or an int) for `keras.random`.

  Returns:
    float32 [B, T, F].
  """
  batch, frames, bins = shape

  def bands(count, max_width, size):  # bool [B, size]: inside some band.
    if count <= 0 or max_width <= 0:
      return ops.zeros((batch, size), 'bool')
    size_f = ops.cast(size, 'float32')
    width = ops.floor(keras.random.uniform(
        (batch, count), 0.0, 1.0, seed=seed) * (max_width + 1))
    width = ops.minimum(width, size_f)
    start = ops.floor(keras.random.uniform(
        (batch, count), 0.0, 1.0, seed=seed) * (size_f - width + 1.0))
    pos = ops.cast(ops.arange(size, dtype='int32'), 'float32')[None, None, :]
    inside = ops.logical_and(pos >= start[..., None],
                             pos < (start + width)[..., None])
    return ops.any(inside, axis=1)

  time = bands(time_mask_count, time_mask_max_frames, frames)
  freq = bands(freq_mask_count, freq_mask_max_bins, bins)
  masked = ops.logical_or(time[:, :, None], freq[:, None, :])
  return 1.0 - ops.cast(masked, 'float32')


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MelFrontend(keras.layers.Layer):
  """Waveforms to log-mel filterbanks (see the module docstring).

  Input: float waveforms [B, T] or [B, T, 1] at `sample_rate` (B and T may
  be unknown while a TensorFlow graph is traced).
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
    freq_mask_max_bins: SpecAugment's masks (see `spec_augment_masks`).
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
    self._window = hann_window(self.window_length)  # [window]
    self._mel_matrix = mel_weight_matrix(
        self.num_mel_bins, self.fft_length // 2 + 1, self.sample_rate,
        self.lower_edge_hertz, self.upper_edge_hertz)  # [fft // 2 + 1, mel]
    self._seed_generator = (keras.random.SeedGenerator(seed)
                            if self.spec_augment else None)

  @property
  def mel_matrix(self) -> np.ndarray:
    """float32 [fft_length // 2 + 1, num_mel_bins]: the mel filters."""
    return self._mel_matrix

  @property
  def window(self) -> np.ndarray:
    """float32 [window_length]: the Hann window."""
    return self._window

  def num_frames(self, num_samples: int) -> int:
    """Frames for `num_samples` samples: ceil(num_samples / hop)."""
    return -(-int(num_samples) // self.hop_length)

  def call(self, inputs, training=None):
    """Log-mel filterbanks, masked when training with `spec_augment`.

    Args:
      inputs: waveforms [B, T] or [B, T, 1].
      training: masks only if true (and `spec_augment`).

    Returns:
      float32 [B, ceil(T / hop), num_mel_bins].
    """
    x = ops.cast(inputs, 'float32')
    if len(x.shape) == 3:
      if x.shape[-1] != 1:
        raise ValueError('MelFrontend takes mono waveforms [B, T] or '
                         f'[B, T, 1], got shape {tuple(inputs.shape)}.')
      x = x[..., 0]
    if len(x.shape) != 2:
      raise ValueError('MelFrontend takes waveforms [B, T] or [B, T, 1], got '
                       f'shape {tuple(inputs.shape)}.')
    frames = frame(x, self.window_length, self.hop_length)  # [B, F, window]
    real, imag = ops.rfft(ops.multiply(frames, self._window),
                          self.fft_length)
    power = ops.square(real) + ops.square(imag)  # [B, F, fft // 2 + 1]
    mel = ops.tensordot(power, self._mel_matrix, axes=1)  # [B, F, mel]
    features = ops.log(mel + self.log_offset)
    if self.spec_augment and training:
      batch, num_frames_, _ = ops.shape(features)
      keep = spec_augment_masks(
          (batch, num_frames_, self.num_mel_bins), self.time_mask_count,
          self.time_mask_max_frames, self.freq_mask_count,
          self.freq_mask_max_bins, self._seed_generator)
      features = ops.where(keep > 0.0, features, self.mask_value)
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
