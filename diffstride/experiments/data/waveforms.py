"""Waveform operations of the audio pipelines, in NumPy, for every pipeline:
loudness normalisation, train crops, whole-clip test windows, resampling,
WAV decoding, and the zero-padded stacking of a batch.

Written once: the NumPy batches (`array_batches`, backends other than
TensorFlow) call these functions directly, and the `tf.data` pipelines
through `tf.numpy_function` (`audio.audio_datasets`). Waveforms are float32
mono samples, [T] unless said otherwise; every random number comes from the
`numpy.random.Generator` passed in.
"""

from __future__ import annotations

import io
import wave
from typing import Optional, Sequence

import numpy as np

from diffstride.experiments import files

SAMPLE_RATE = 16000  # Hz: the rate of the paper's tasks and the default.
# LEAF's loudness normalisation.
TARGET_DB = 15.0
MAX_GAIN_DB = 30.0


def loudness_normalization(samples: np.ndarray, target_db: float = TARGET_DB,
                           max_gain_db: float = MAX_GAIN_DB,
                           axis=None) -> np.ndarray:
  """LEAF's loudness normalisation: gain min(10^(max/20), 10^(target/20)/std).

  An all-zero input stays zero.

  Args:
    samples: float32 waveform(s), any shape.
    axis: the std is taken over this axis, one gain per slice (None: one
      gain for all of `samples`).

  Returns:
    `samples` times the gain, same shape, float32.
  """
  samples = np.asarray(samples, np.float32)
  std = samples.std(axis=axis, keepdims=axis is not None, dtype=np.float64)
  gain = np.minimum(10.0**(max_gain_db / 20.0),
                    10.0**(target_db / 20.0) / (std + 1e-9))
  return (gain * samples).astype(np.float32)


def random_crop_or_pad(samples: np.ndarray, length: int,
                       rng: np.random.Generator) -> np.ndarray:
  """A random `length`-sample crop [length] of [T] samples (offset uniform in
  [0, T - length]), zero-padded at the end first if T < length."""
  samples = np.asarray(samples, np.float32)
  if len(samples) < length:
    samples = np.pad(samples, (0, length - len(samples)))
  start = int(rng.integers(0, len(samples) - length + 1))
  return samples[start:start + length]


def train_window(samples: np.ndarray, window: int, rng: np.random.Generator,
                 normalize: bool = True, target_db: float = TARGET_DB,
                 max_gain_db: float = MAX_GAIN_DB) -> np.ndarray:
  """A train example [window]: a random crop (`random_crop_or_pad`),
  loudness-normalised when `normalize`."""
  crop = random_crop_or_pad(samples, window, rng)
  if normalize:
    crop = loudness_normalization(crop, target_db, max_gain_db)
  return crop


def whole_clip_windows(samples: np.ndarray, window: int,
                       max_windows: Optional[int] = None,
                       target_db: float = TARGET_DB,
                       max_gain_db: float = MAX_GAIN_DB,
                       normalize: bool = True) -> np.ndarray:
  """[T] -> [k * window]: zero-padded to whole windows (k = ceil(T / window),
  at least 1, at most `max_windows`), each window loudness-normalised on its
  own when `normalize`."""
  samples = np.asarray(samples, np.float32)
  num = max(-(-len(samples) // window), 1)
  if max_windows is not None:
    num = min(num, int(max_windows))
  samples = samples[:num * window]
  windows = np.pad(samples, (0, num * window - len(samples))).reshape(
      num, window)
  if normalize:
    windows = loudness_normalization(windows, target_db, max_gain_db, axis=1)
  return windows.reshape(-1)


def stack_padded(waveforms: Sequence[np.ndarray]) -> np.ndarray:
  """[B, T_max]: the waveforms zero-padded at the end to the longest (as
  `tf.data.Dataset.padded_batch`), float32."""
  length = max(len(w) for w in waveforms)
  out = np.zeros((len(waveforms), length), np.float32)
  for row, samples in zip(out, waveforms):
    row[:len(samples)] = samples
  return out


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
  """Band-limited resampling of [T] samples by the Fourier method.

  Output [round(T * out_rate / in_rate)] (at least 1), float32; the spectrum
  is truncated (downsampling: an ideal low-pass at the new Nyquist) or
  zero-padded (upsampling), as `scipy.signal.resample` does. A no-op when
  the rates are equal.
  """
  samples = np.asarray(samples, np.float32)
  in_rate, out_rate = int(in_rate), int(out_rate)
  if in_rate == out_rate:
    return samples
  length = len(samples)
  new_length = max((length * out_rate + in_rate // 2) // in_rate, 1)
  spectrum = np.fft.rfft(samples)[:new_length // 2 + 1]
  out = np.fft.irfft(spectrum, n=new_length)
  return (out * (new_length / length)).astype(np.float32)


def _pcm16_format(wav: wave.Wave_read, path: str):
  """(sample rate, channels) of an open WAV file.

  Raises:
    ValueError: its samples are not 16-bit PCM (the only kind read).
  """
  if wav.getsampwidth() != 2:
    raise ValueError(
        f'{path}: {8 * wav.getsampwidth()}-bit samples; only 16-bit PCM WAV '
        'files are read (convert with e.g. `sox in.wav -b 16 out.wav`).')
  return int(wav.getframerate()), int(wav.getnchannels())


def _not_a_wav(path: str, error: Exception) -> ValueError:
  return ValueError(f'{path} is not a 16-bit PCM WAV file ({error}); only '
                    '16-bit PCM WAV files are read.')


def wav_sample_rate(path: str) -> int:
  """The sample rate in a WAV file's header (only the header is read).

  Raises:
    ValueError: not a 16-bit PCM WAV file.
  """
  try:
    with files.open_file(path, 'rb') as f, wave.open(f) as wav:
      return _pcm16_format(wav, path)[0]
  except (wave.Error, EOFError) as e:
    raise _not_a_wav(path, e) from e


def read_wav(path: str, sample_rate: int) -> np.ndarray:
  """float32 [T] mono samples in [-1, 1] of a 16-bit PCM WAV file, at
  `sample_rate` (resampled from the file's rate if it differs; channels
  averaged).

  Raises:
    ValueError: not a 16-bit PCM WAV file.
  """
  with files.open_file(path, 'rb') as f:
    data = f.read()
  try:
    with wave.open(io.BytesIO(data)) as wav:
      rate, channels = _pcm16_format(wav, path)
      frames = wav.readframes(wav.getnframes())
  except (wave.Error, EOFError) as e:
    raise _not_a_wav(path, e) from e
  samples = np.frombuffer(frames, '<i2').astype(np.float32) / 32768.0
  samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
  return resample(samples, rate, sample_rate)
