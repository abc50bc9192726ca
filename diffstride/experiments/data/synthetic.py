"""The built-in data sets, generated: no files, no network.

  * 'synthetic_frequency' (images): 10 classes of 32x32 RGB images that
    differ only in spatial frequency (`synthetic_frequency_arrays`), generated
    in memory with NumPy in a few seconds.
  * 'synthetic_audio' (audio): 8 classes of 2 s clips, 4 temporal
    structures x 2 pitch registers (`synthetic_audio_example`), generated
    in memory with NumPy.

Their sizes and seeds are gin-bindable (`synthetic_frequency_arrays.*`,
`synthetic_audio_settings.*`); `SyntheticFrequencySettings` and
`SyntheticAudioSettings` hold them, so a source can describe a set without
generating it.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import gin
import numpy as np

from diffstride.experiments.data import batch_augmentation
from diffstride.experiments.data import waveforms

SYNTHETIC_FREQUENCY_NAME = 'synthetic_frequency'
SYNTHETIC_AUDIO_NAME = 'synthetic_audio'

# ----------------------------------------------------------------------------
# Images: synthetic_frequency.

SYNTHETIC_FREQUENCY_RANGE = (0.05, 0.45)  # cycles per pixel (Nyquist: 0.5)
SYNTHETIC_BAND_OVERLAP = 0.1  # Fraction of a band's width added on each side.
_SYNTHETIC_CHUNK = 100  # Images generated per RNG stream.


def synthetic_frequency_bands(num_classes: int = 10) -> np.ndarray:
  """[num_classes, 2] (low, high) radial frequency of each class, cycles/px."""
  edges = np.linspace(*SYNTHETIC_FREQUENCY_RANGE, num_classes + 1)
  margin = SYNTHETIC_BAND_OVERLAP * (edges[1] - edges[0])
  return np.stack([edges[:-1] - margin, edges[1:] + margin], axis=1)


def _balanced_labels(n: int, num_classes: int,
                     rng: np.random.Generator) -> np.ndarray:
  """[n] labels: rounds of a random permutation of the classes, so every
  prefix is balanced."""
  rounds = -(-n // num_classes)
  return np.concatenate(
      [rng.permutation(num_classes) for _ in range(rounds)])[:n]


def _frequency_images(labels: np.ndarray, num_classes: int, size: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Images [n, size, size, 3] float32 of the given classes, labels [n]
  (see `synthetic_frequency_arrays`)."""
  n = len(labels)
  bands = synthetic_frequency_bands(num_classes)
  yy, xx = np.meshgrid(np.arange(size, dtype=np.float32),
                       np.arange(size, dtype=np.float32), indexing='ij')
  # 2 or 3 gratings per image.
  max_gratings = 3
  num_gratings = rng.integers(2, max_gratings + 1, size=n)
  active = np.arange(max_gratings)[None, :] < num_gratings[:, None]
  freq = rng.uniform(bands[labels, :1], bands[labels, 1:],
                     size=(n, max_gratings))
  theta = rng.uniform(0.0, np.pi, size=(n, max_gratings))
  phase = rng.uniform(0.0, 2 * np.pi, size=(n, max_gratings))
  amplitude = rng.uniform(0.06, 0.12, size=(n, max_gratings)) * active
  colour = rng.uniform(0.2, 1.0, size=(n, max_gratings, 3))
  colour /= colour.max(axis=-1, keepdims=True)
  kx = (freq * np.cos(theta)).astype(np.float32)[..., None, None]
  ky = (freq * np.sin(theta)).astype(np.float32)[..., None, None]
  gratings = amplitude.astype(np.float32)[..., None, None] * np.cos(
      2 * np.pi * (kx * xx + ky * yy) + phase.astype(np.float32)[..., None,
                                                                 None])
  images = np.einsum('ngij,ngc->nijc', gratings, colour.astype(np.float32))
  # Background: a random mean colour and two broad Gaussian blobs.
  images += rng.uniform(0.3, 0.7, size=(n, 1, 1, 3)).astype(np.float32)
  num_blobs = 2
  cy = rng.uniform(0, size, size=(n, num_blobs))[..., None, None]
  cx = rng.uniform(0, size, size=(n, num_blobs))[..., None, None]
  sigma = rng.uniform(size / 8, size / 3, size=(n, num_blobs))[..., None, None]
  blob_colour = rng.uniform(-0.2, 0.2, size=(n, num_blobs, 3))
  blobs = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * sigma**2))
  images += np.einsum('nbij,nbc->nijc', blobs.astype(np.float32),
                      blob_colour.astype(np.float32))
  images += rng.normal(0.0, 0.05, size=images.shape).astype(np.float32)
  return images.astype(np.float32)


def _frequency_split(n: int, num_classes: int, size: int,
                     seed_sequence: np.random.SeedSequence
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """(images [n, size, size, 3] float32, labels [n] int64) of one split."""
  label_seed, image_seed = seed_sequence.spawn(2)
  # Whole chunks, each from its own stream, then cut: the first examples do
  # not depend on n.
  num_chunks = -(-n // _SYNTHETIC_CHUNK)
  labels = _balanced_labels(num_chunks * _SYNTHETIC_CHUNK, num_classes,
                            np.random.default_rng(label_seed))
  chunk_seeds = image_seed.spawn(num_chunks)
  images = [np.zeros((0, size, size, 3), np.float32)]
  for i in range(num_chunks):
    chunk = labels[i * _SYNTHETIC_CHUNK:(i + 1) * _SYNTHETIC_CHUNK]
    images.append(_frequency_images(chunk, num_classes, size,
                                    np.random.default_rng(chunk_seeds[i])))
  return np.concatenate(images)[:n], labels[:n].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SyntheticFrequencySettings:
  """What the 'synthetic_frequency' set is (see `synthetic_frequency_arrays`).

  Attributes:
    num_train: number of train images.
    num_test: number of test images.
    num_classes: number of classes (frequency bands), >= 2.
    image_size: height and width of the images, >= 4.
    seed: the data set's seed.
  """
  num_train: int = 5000
  num_test: int = 1000
  num_classes: int = 10
  image_size: int = 32
  seed: int = 0
  name = SYNTHETIC_FREQUENCY_NAME

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f'num_classes must be >= 2, got {self.num_classes}.')
    if self.image_size < 4:
      raise ValueError(f'image_size must be >= 4, got {self.image_size}.')

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    """(H, W, C) of one image."""
    return (self.image_size, self.image_size, 3)

  def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generates `(x_train, y_train, x_test, y_test)`: float32 images
    [n, S, S, 3] (S = image_size) and int64 labels [n]."""
    train_seeds, test_seeds = np.random.SeedSequence(self.seed).spawn(2)
    x_train, y_train = _frequency_split(self.num_train, self.num_classes,
                                        self.image_size, train_seeds)
    x_test, y_test = _frequency_split(self.num_test, self.num_classes,
                                      self.image_size, test_seeds)
    return x_train, y_train, x_test, y_test


# `settings_only` is for the sources (describing the set without generating
# it): not bindable.
@gin.configurable(module='diffstride', denylist=['settings_only'])
def synthetic_frequency_arrays(num_train: int = 5000,
                               num_test: int = 1000,
                               num_classes: int = 10,
                               image_size: int = 32,
                               seed: int = 0,
                               *,
                               settings_only: bool = False):
  """The 'synthetic_frequency' data set: classes that differ in frequency.

  Returns `(x_train, y_train, x_test, y_test)`: float32 images
  `[n, image_size, image_size, 3]` and int64 labels `[n]` in
  `[0, num_classes)`.

  How an image of class k is made (all sizes in pixels of a
  `image_size x image_size` image, frequencies in cycles per pixel, Nyquist =
  0.5):
    1. Class bands: [0.05, 0.45] is cut into `num_classes` equal bands, each
       widened by 10% of its width on both sides, so neighbouring classes
       overlap slightly (10 classes: band k = [0.036 + 0.04 k,
       0.094 + 0.04 k]). `synthetic_frequency_bands` returns them.
    2. Signal: the sum of 2 or 3 (uniformly) sinusoidal gratings
       `a * cos(2 pi f (x cos t + y sin t) + p) * c` with radial frequency f
       uniform in band k, orientation t uniform in [0, pi), phase p uniform
       in [0, 2 pi), amplitude a uniform in [0.06, 0.12] and colour weights c
       (3 values uniform in [0.2, 1], divided by their maximum).
    3. Background, the same for every class: a mean colour uniform in
       [0.3, 0.7] per channel, plus two Gaussian blobs (centre uniform in the
       image, sigma uniform in [size/8, size/3], colour uniform in [-0.2, 0.2]
       per channel), which only have low frequencies.
    4. Pixel noise: i.i.d. Gaussian, sigma 0.05.
  Values are roughly in [0, 1] (about -0.3 to 1.3); they are not clipped, so
  the spectrum is exactly the one described.

  Only the frequency band carries the class: the mean colour of an image says
  nothing about it (a nearest-centroid classifier on the mean colour is at
  chance, about 10%), while a nearest-centroid classifier on the radially
  binned magnitude of the 2-D FFT gets over 90% of the test set right.
  Halving the resolution (2x2 average pooling) drops the latter to about 65%:
  the high-frequency classes need resolution, which is what learned strides
  trade against compute. A small CNN (3 convolutions, Adam, 8 epochs, default
  pipeline) got 94% test accuracy at full resolution, 81% after a 2x2 average
  pooling of its input and 53% after a 4x4 one (one run, seed 0).

  Randomness: only NumPy generators seeded from `seed` (never the global
  RNG). The train and test sets come from separate streams, and the first n
  examples of a split do not depend on the requested split size. Labels are
  balanced in every prefix (class counts differ by at most 1): they are
  consecutive random permutations of the classes.

  Args:
    num_train: number of train images.
    num_test: number of test images.
    num_classes: number of classes (frequency bands).
    image_size: height and width of the images.
    seed: the data set's seed.
    settings_only: return the `SyntheticFrequencySettings` these arguments
      (and the gin bindings) make, without generating anything.
  """
  settings = SyntheticFrequencySettings(num_train, num_test, num_classes,
                                        image_size, seed)
  return settings if settings_only else settings.arrays()


# ----------------------------------------------------------------------------
# Audio: synthetic_audio.

SYNTHETIC_STRUCTURES = ('steady', 'pulsed', 'chirps', 'noise_bursts')
SYNTHETIC_REGISTERS = ((150.0, 300.0), (600.0, 1200.0))  # f0 ranges, Hz
SYNTHETIC_HARMONICS = 16  # Harmonics of the tones (those below 7 kHz).


def synthetic_audio_classes() -> Tuple[str, ...]:
  """Names of the 8 classes: temporal structure x pitch register."""
  return tuple(f'{s}_{r}' for s in SYNTHETIC_STRUCTURES
               for r in ('low', 'high'))


def synthetic_audio_example(index: int, split: int = 0, seed: int = 0,
                            clip_seconds: float = 2.0,
                            sample_rate: int = waveforms.SAMPLE_RATE):
  """One clip of the 'synthetic_audio' set: (float32 [N] waveform, int label).

  N = round(clip_seconds * sample_rate). A pure function of (seed, split,
  index): NumPy, every random number from a generator keyed by the three
  (`batch_augmentation.generator`). Label k = index mod 8 = 2 * structure +
  register, so every class appears once in every 8 consecutive indices.

  Register (the pitch): f0 log-uniform in [150, 300] Hz (low) or
  [600, 1200] Hz (high). Structure (the time course), present all along the
  clip:
    0 'steady': a harmonic tone (harmonics h = 1..16 below 7 kHz,
      amplitude 1/h);
    1 'pulsed': the same tone gated on/off at 5-9 Hz (50% duty cycle);
    2 'chirps': repeated upward sweeps of one octave from f0, one every
      0.15-0.3 s (harmonics as above);
    3 'noise_bursts': white noise band-passed to [2 f0, 8 f0] Hz, in bursts
      (20% duty cycle at 3-6 bursts per second).
  Then: unit RMS, plus white background noise of RMS 0.05-0.3, times a gain
  of 10^U(-2, 0). Telling the classes apart needs both frequency resolution
  (the register) and time resolution (the structure).

  Args:
    index: the example's index.
    split: 0 for train, 1 for test (independent streams).
    seed: the data set's seed.
    clip_seconds: duration of a clip.
    sample_rate: in Hz.
  """
  num_samples = int(round(clip_seconds * sample_rate))
  label = int(index) % 8
  structure, register = divmod(label, 2)
  rng = batch_augmentation.generator([seed, split, index])
  uniform = rng.random(4)
  low, high = SYNTHETIC_REGISTERS[register]
  f0 = low * (high / low)**uniform[0]
  t = np.arange(num_samples) / sample_rate
  two_pi = 2.0 * np.pi

  def harmonic(freq):  # freq: [N] instantaneous f0 (Hz) -> [N]
    phase = np.cumsum(two_pi * freq / sample_rate) + two_pi * uniform[1]
    count = min(SYNTHETIC_HARMONICS, int(7000.0 // freq.min()) + 1)
    harmonics = np.arange(1, count + 1)[:, None]
    keep = harmonics * freq[None, :] < 7000.0
    return (keep * np.sin((harmonics * phase[None, :]).astype(np.float32))
            / harmonics).sum(axis=0)

  if structure in (0, 1):  # steady, pulsed
    signal = harmonic(np.full(num_samples, f0))
    if structure == 1:
      rate = 5.0 + 4.0 * uniform[2]
      signal = signal * (np.sin(two_pi * (rate * t + uniform[3])) > 0.0)
  elif structure == 2:  # chirps
    period = 0.15 + 0.15 * uniform[2]
    sweep = np.mod(t / period + uniform[3], 1.0)
    signal = harmonic(f0 * 2.0**sweep)
  else:  # noise bursts
    freqs = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    band = (freqs >= 2.0 * f0) & (freqs <= 8.0 * f0)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(num_samples)) * band,
                         n=num_samples)
    rate = 3.0 + 3.0 * uniform[2]
    # sin > 0.81: about 20% of each period.
    signal = noise * (np.sin(two_pi * (rate * t + uniform[3])) > 0.81)
  signal = signal / (np.sqrt(np.mean(np.square(signal))) + 1e-6)
  background, gain_exponent = rng.random(2)
  signal = signal + (0.05 + 0.25 * background) * rng.standard_normal(
      num_samples)
  signal = signal * 10.0**(-2.0 * gain_exponent)
  return signal.astype(np.float32), label


@dataclasses.dataclass(frozen=True)
class SyntheticAudioSettings:
  """What the 'synthetic_audio' set is (see `synthetic_audio_example`).

  Attributes:
    num_train: number of train clips.
    num_test: number of test clips.
    clip_seconds: duration of a clip.
    seed: the data set's seed.
  """
  num_train: int
  num_test: int
  clip_seconds: float
  seed: int

  @property
  def num_classes(self) -> int:
    return len(synthetic_audio_classes())

  def arrays(self, split: int, num: int,
             sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """The first `num` clips of `split` (0: train, 1: test): float32
    waveforms [num, N] (N = round(clip_seconds * sample_rate)) and int32
    labels [num]."""
    clips = [synthetic_audio_example(i, split, self.seed, self.clip_seconds,
                                     sample_rate) for i in range(num)]
    num_samples = int(round(self.clip_seconds * sample_rate))
    waves = np.stack([x for x, _ in clips]) if clips else np.zeros(
        (0, num_samples), np.float32)
    return waves, np.array([y for _, y in clips], np.int32)


@gin.configurable(module='diffstride')
def synthetic_audio_settings(num_train: int = 2000, num_test: int = 400,
                             clip_seconds: float = 2.0,
                             seed: int = 0) -> SyntheticAudioSettings:
  """The size and seed of 'synthetic_audio' (gin-bindable); 8 classes.

  The clips last a whole number of the usual 1 s windows, so a test clip is
  cut into whole windows with no zero padding (at 1.5 s, the padded second
  half of the last window, which no training crop has, made the test
  accuracy depend on how a model happened to treat silence).
  """
  return SyntheticAudioSettings(num_train=int(num_train),
                                num_test=int(num_test),
                                clip_seconds=float(clip_seconds),
                                seed=int(seed))
