"""Waveform operations of the audio pipelines: loudness normalisation, train
crops, whole-clip test windows, resampling. Waveforms are float32 mono
samples, [T] unless said otherwise."""

from __future__ import annotations

from typing import Optional

from diffstride.experiments.optional import tf

SAMPLE_RATE = 16000  # Hz: the rate of the paper's tasks and the default.
# LEAF's loudness normalisation.
TARGET_DB = 15.0
MAX_GAIN_DB = 30.0


def loudness_normalization(samples: tf.Tensor, target_db: float = TARGET_DB,
                           max_gain_db: float = MAX_GAIN_DB,
                           axis=None) -> tf.Tensor:
  """LEAF's loudness normalisation: gain min(10^(max/20), 10^(target/20)/std).

  An all-zero input stays zero.

  Args:
    samples: float32 waveform(s), any shape.
    axis: the std is taken over this axis, one gain per slice (None: one
      gain for all of `samples`).

  Returns:
    `samples` times the gain, same shape.
  """
  std = tf.math.reduce_std(samples, axis=axis, keepdims=axis is not None)
  gain = tf.minimum(10.0**(max_gain_db / 20.0),
                    10.0**(target_db / 20.0) / (std + 1e-9))
  return gain * samples


def random_crop_or_pad(samples: tf.Tensor, length: int,
                       seed: tf.Tensor) -> tf.Tensor:
  """A random `length`-sample crop [length] of [T] samples, zero-padded at
  the end first if T < length. `seed`: int [2] for the stateless op."""
  pad = tf.maximum(length - tf.shape(samples)[0], 0)
  samples = tf.pad(samples, [[0, pad]])
  return tf.image.stateless_random_crop(samples, [length], seed)


def whole_clip_windows(samples: tf.Tensor, window: int,
                       max_windows: Optional[int] = None,
                       target_db: float = TARGET_DB,
                       max_gain_db: float = MAX_GAIN_DB,
                       normalize: bool = True) -> tf.Tensor:
  """[T] -> [k * window]: zero-padded to whole windows (k = ceil(T / window),
  at least 1, at most `max_windows`), each window loudness-normalised on its
  own when `normalize`."""
  num = tf.maximum(-(-tf.shape(samples)[0] // window), 1)
  if max_windows is not None:
    num = tf.minimum(num, max_windows)
  samples = samples[:num * window]
  samples = tf.pad(samples, [[0, num * window - tf.shape(samples)[0]]])
  windows = tf.reshape(samples, [num, window])
  if normalize:
    windows = loudness_normalization(windows, target_db, max_gain_db, axis=1)
  return tf.reshape(windows, [-1])


def resample(samples: tf.Tensor, in_rate, out_rate: int) -> tf.Tensor:
  """Band-limited resampling of [T] samples by the Fourier method.

  Output [round(T * out_rate / in_rate)]; the spectrum is truncated
  (downsampling: an ideal low-pass at the new Nyquist) or zero-padded
  (upsampling), as `scipy.signal.resample` does. A no-op when the rates are
  equal. Works in graph mode with `in_rate` a tensor.
  """
  in_rate = tf.cast(in_rate, tf.int64)

  def convert():
    length = tf.shape(samples, out_type=tf.int64)[0]
    new_length = tf.maximum(
        (length * out_rate + in_rate // 2) // in_rate, 1)
    spec = tf.signal.rfft(samples[None, :])[0]
    bins = new_length // 2 + 1
    spec = spec[:bins]
    spec = tf.pad(spec, [[0, bins - tf.shape(spec, out_type=tf.int64)[0]]])
    out = tf.signal.irfft(spec[None, :], fft_length=tf.cast(
        tf.reshape(new_length, [1]), tf.int32))[0]
    return out * tf.cast(new_length, tf.float32) / tf.cast(length, tf.float32)

  return tf.cond(tf.equal(in_rate, out_rate), lambda: samples, convert)
