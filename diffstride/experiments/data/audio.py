"""Audio classification input pipelines: the paper's tasks, WAV folders, and a
built-in synthetic set.

`audio_datasets(name, ...)` returns `(train, test, info)` like
`data.image_datasets`: two batched `tf.data.Dataset`s of `(waveforms,
labels)` with float32 mono waveforms and float32 one-hot labels `[B, K]`,
and a `data.DatasetInfo` whose `image_shape` is `(window_samples,)`, the
shape of one model input (16000 for 1 s at 16 kHz).

  * train: random `window_seconds` crops (clips shorter than that are
    zero-padded at the end, as in LEAF), loudness-normalised, `[B, W]`
    (W = window samples), shuffled, full batches only when there is at least
    one full batch.
  * test: whole clips, zero-padded at the end to a whole number of windows
    (optionally cut to `max_eval_seconds`), each window loudness-normalised
    on its own, batched with `padded_batch`: `[B, k W]` where k is the
    largest number of windows in the batch. `audio_model.AudioClassifier`
    cuts such inputs into consecutive windows, classifies each and averages
    the logits over the windows that are not all zeros (the padding).

Loudness normalisation (LEAF's `loudness_normalization`): x * min(10^(30/20),
10^(15/20) / (std(x) + 1e-9)); an all-zero window stays zero.

Datasets (`name`):

  * TFDS (tensorflow-datasets), read from `data_dir` (else env
    `TFDS_DATA_DIR`, else TFDS's default); nothing is downloaded unless
    `download=True`, a missing dataset raises `FileNotFoundError` saying how
    to get it:
      'speech_commands' (keyword spotting, 12 classes), 'crema_d' (emotion,
      6), 'voxforge' (language, 6; manual download), 'voxceleb' (speaker
      identification, 1251 speakers in TFDS's 1252-way label; manual
      download), 'nsynth_instrument' (NSynth instrument family, 11) and
      'nsynth_pitch' (NSynth pitch, 128 MIDI pitches), both from TFDS's
      'nsynth/full'. All are 16 kHz.
  * 'folder:/root' or 'folder:/train_root,/test_root': one sub-folder of WAV
    files per class (16-bit PCM, any sample rate: resampled to
    `sample_rate` unless `resample=False`, which makes a mismatch an error).
    A single folder is split into a seeded hold-out of `test_split` (default
    20%) of its files. This is how the paper's tasks that TFDS does not carry
    (acoustic scenes, birdsong) are read.
  * 'synthetic_audio': the built-in set (`synthetic_audio_example`),
    generated on the fly, no files, no network.
"""

import dataclasses
import os
import wave
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride.experiments.data import images as data

SAMPLE_RATE = 16000
SYNTHETIC_NAME = 'synthetic_audio'
FOLDER_PREFIX = data.FOLDER_PREFIX
WAV_EXTENSIONS = ('.wav',)
WAV_FOLDER_LAYOUT = ('root/class_a/xxx.wav, root/class_a/xxy.wav, ..., '
                     'root/class_b/yyy.wav, ... (one sub-folder per class, '
                     '16-bit PCM WAV files inside)')
# LEAF's loudness normalisation.
TARGET_DB = 15.0
MAX_GAIN_DB = 30.0


@dataclasses.dataclass(frozen=True)
class AudioTask:
  """How to read one of the paper's TFDS tasks."""
  tfds_name: str
  label: Tuple[str, ...]  # Path of the label feature in the example dict.
  num_classes: int
  train_split: str
  test_split: str
  scale: float  # Multiplies the stored samples (int16 values -> [-1, 1]).
  num_train: int  # Full split sizes (0: unknown until prepared).
  num_test: int
  manual: Optional[str] = None  # Where to get the files of a manual download.


_INT16 = 1.0 / 32768.0
TFDS_TASKS: Dict[str, AudioTask] = {
    'speech_commands': AudioTask('speech_commands', ('label',), 12, 'train',
                                 'test', _INT16, 85_511, 4_890),
    'crema_d': AudioTask('crema_d', ('label',), 6, 'train', 'test', _INT16,
                         5_144, 1_556),
    'voxforge': AudioTask(
        'voxforge', ('label',), 6, 'train', 'test', _INT16, 0, 0,
        manual='the archives listed in https://storage.googleapis.com/'
        'tfds-data/downloads/voxforge/voxforge_urls.txt (from '
        'http://www.voxforge.org)'),
    'voxceleb': AudioTask(
        'voxceleb', ('label',), 1252, 'train', 'test', _INT16, 0, 0,
        manual='vox_dev_wav.zip (VoxCeleb1 dev set; registration at '
        'http://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html)'),
    'nsynth_instrument': AudioTask('nsynth/full', ('instrument', 'family'), 11,
                                   'train', 'test', 1.0, 289_205, 4_096),
    'nsynth_pitch': AudioTask('nsynth/full', ('pitch',), 128, 'train', 'test',
                              1.0, 289_205, 4_096),
}
KNOWN_DATASETS = tuple(TFDS_TASKS) + (SYNTHETIC_NAME,
                                      FOLDER_PREFIX + '/path/to/class_folders')


# ----------------------------------------------------------------------------
# Waveform operations.


def loudness_normalization(samples: tf.Tensor, target_db: float = TARGET_DB,
                           max_gain_db: float = MAX_GAIN_DB,
                           axis=None) -> tf.Tensor:
  """LEAF's loudness normalisation: gain min(10^(max/20), 10^(target/20)/std).

  Args:
    samples: float32 waveform(s).
    axis: the std is taken over this axis (None: all of `samples`).
  """
  std = tf.math.reduce_std(samples, axis=axis, keepdims=axis is not None)
  gain = tf.minimum(10.0**(max_gain_db / 20.0),
                    10.0**(target_db / 20.0) / (std + 1e-9))
  return gain * samples


def random_crop_or_pad(samples: tf.Tensor, length: int,
                       seed: tf.Tensor) -> tf.Tensor:
  """A random `length`-sample crop of [T] samples, zero-padded at the end
  first if T < length. `seed`: int [2] for the stateless op."""
  pad = tf.maximum(length - tf.shape(samples)[0], 0)
  samples = tf.pad(samples, [[0, pad]])
  return tf.image.stateless_random_crop(samples, [length], seed)


def whole_clip_windows(samples: tf.Tensor, window: int,
                       max_windows: Optional[int] = None,
                       target_db: float = TARGET_DB,
                       max_gain_db: float = MAX_GAIN_DB,
                       normalize: bool = True) -> tf.Tensor:
  """[T] -> [k * window]: zero-padded to whole windows (k = ceil(T / window),
  at least 1, at most `max_windows`), each window loudness-normalised."""
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

  Output length round(T * out_rate / in_rate); the spectrum is truncated
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


# ----------------------------------------------------------------------------
# Built-in data: synthetic_audio.

SYNTHETIC_STRUCTURES = ('steady', 'pulsed', 'chirps', 'noise_bursts')
SYNTHETIC_REGISTERS = ((150.0, 300.0), (600.0, 1200.0))  # f0 ranges, Hz
SYNTHETIC_HARMONICS = 16  # Harmonics of the tones (those below 7 kHz).


def synthetic_audio_classes() -> Tuple[str, ...]:
  """Names of the 8 classes: temporal structure x pitch register."""
  return tuple(f'{s}_{r}' for s in SYNTHETIC_STRUCTURES
               for r in ('low', 'high'))


def synthetic_audio_example(index, split: int = 0, seed: int = 0,
                            clip_seconds: float = 1.5,
                            sample_rate: int = SAMPLE_RATE):
  """One clip of the 'synthetic_audio' set: (float32 [N] waveform, int label).

  Deterministic in (seed, split, index): stateless TensorFlow random ops, so
  it runs inside `tf.data` (no data held in memory). Label
  k = index mod 8 = 2 * structure + register, so every class appears once in
  every 8 consecutive indices.

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
    index: int or scalar int tensor, the example's index.
    split: 0 for train, 1 for test (independent streams).
    seed: the data set's seed.
    clip_seconds: duration of a clip.
    sample_rate: in Hz.
  """
  num_samples = int(round(clip_seconds * sample_rate))
  index = tf.cast(index, tf.int64)
  label = tf.cast(index % 8, tf.int32)
  structure, register = label // 2, label % 2
  key = tf.stack([tf.constant(seed, tf.int64) * 2 + split, index])
  seeds = tf.unstack(tf.random.experimental.stateless_split(key, 8))
  uniform = lambda i, shape=(): tf.random.stateless_uniform(shape, seeds[i])
  t = tf.range(num_samples, dtype=tf.float32) / sample_rate
  low = tf.gather(tf.constant([r[0] for r in SYNTHETIC_REGISTERS]), register)
  high = tf.gather(tf.constant([r[1] for r in SYNTHETIC_REGISTERS]), register)
  f0 = low * tf.exp(uniform(0) * tf.math.log(high / low))
  two_pi = 2.0 * np.pi

  harmonics = tf.range(1, SYNTHETIC_HARMONICS + 1, dtype=tf.float32)[:, None]

  def harmonic(freq):  # freq: [N] instantaneous f0 (Hz) -> [N]
    phase = tf.cumsum(two_pi * freq / sample_rate) + two_pi * uniform(1)
    keep = tf.cast(harmonics * freq[None, :] < 7000.0, tf.float32)
    return tf.reduce_sum(keep * tf.sin(harmonics * phase[None, :]) / harmonics,
                         axis=0)

  def steady():
    return harmonic(tf.fill([num_samples], f0))

  def pulsed():
    rate = 5.0 + 4.0 * uniform(2)
    gate = tf.cast(tf.sin(two_pi * rate * t + two_pi * uniform(3)) > 0.0,
                   tf.float32)
    return steady() * gate

  def chirps():
    period = 0.15 + 0.15 * uniform(2)
    sweep = tf.math.floormod(t / period + uniform(3), 1.0)
    return harmonic(f0 * tf.pow(2.0, sweep))

  def noise_bursts():
    noise = tf.random.stateless_normal([num_samples], seeds[4])
    freqs = tf.linspace(0.0, sample_rate / 2.0, num_samples // 2 + 1)
    band = tf.cast((freqs >= 2.0 * f0) & (freqs <= 8.0 * f0), tf.complex64)
    noise = tf.signal.irfft(tf.signal.rfft(noise) * band,
                            fft_length=[num_samples])
    rate = 3.0 + 3.0 * uniform(2)
    gate = tf.cast(tf.sin(two_pi * rate * t + two_pi * uniform(3)) > 0.81,
                   tf.float32)  # sin > 0.81: about 20% of each period.
    return noise * gate

  signal = tf.switch_case(structure, [steady, pulsed, chirps, noise_bursts])
  signal.set_shape([num_samples])
  signal /= tf.sqrt(tf.reduce_mean(tf.square(signal))) + 1e-6
  background = 0.05 + 0.25 * uniform(5)
  signal += background * tf.random.stateless_normal([num_samples], seeds[6])
  signal *= tf.pow(10.0, -2.0 * uniform(7))
  return signal, label


@gin.configurable(module='diffstride')
def synthetic_audio_settings(num_train: int = 2000, num_test: int = 400,
                             clip_seconds: float = 1.5,
                             seed: int = 0) -> Dict[str, float]:
  """The size and seed of 'synthetic_audio' (gin-bindable); 8 classes."""
  return dict(num_train=int(num_train), num_test=int(num_test),
              clip_seconds=float(clip_seconds), seed=int(seed))


# ----------------------------------------------------------------------------
# Sources: unbatched (float32 [T] waveform at `sample_rate`, int label).


@dataclasses.dataclass
class _Source:
  train: tf.data.Dataset
  test: tf.data.Dataset
  name: str
  num_classes: int
  num_train: int
  num_test: int
  always_cache: bool = False  # Generated data: cache rather than regenerate.


def _missing_message(name: str, task: AudioTask, builder,
                     data_dir: Optional[str]) -> str:
  searched = data_dir or os.path.dirname(os.path.dirname(
      os.fspath(builder.data_dir)))
  prepare = ('`python -c "import tensorflow_datasets as tfds; '
             f"tfds.builder('{task.tfds_name}', data_dir={searched!r})"
             '.download_and_prepare()"`')
  head = (f"Audio dataset '{name}' (TFDS '{task.tfds_name}') is not prepared "
          f'in data_dir {searched!r} (looked for '
          f'{os.fspath(builder.data_dir)}), and download=False never '
          'downloads. ')
  if task.manual:
    manual = os.path.join(searched, 'downloads', 'manual')
    return (head + f'It needs a manual download: get {task.manual}, put the '
            f'files in {manual}/, then run {prepare} (or call audio_datasets '
            'with download=True), or point data_dir / TFDS_DATA_DIR at a '
            'directory where it is already prepared.')
  return (head + f'On a machine with internet, run {prepare} (and copy '
          f'{os.path.join(searched, task.tfds_name.split("/")[0])} here if it '
          'is another machine), or call audio_datasets with download=True, '
          'or point data_dir / TFDS_DATA_DIR at a directory where it is '
          'already prepared.')


def _tfds_source(name: str, *, data_dir, download, seed, train_split,
                 test_split, max_train_examples, max_test_examples) -> _Source:
  task = TFDS_TASKS[name]
  data_dir = data._resolve_data_dir(data_dir)  # pylint: disable=protected-access
  builder = tfds.builder(task.tfds_name, data_dir=data_dir)
  if download:
    try:
      builder.download_and_prepare()
    except AssertionError as e:
      if 'manual' not in str(e).lower():
        raise
      raise FileNotFoundError(
          _missing_message(name, task, builder, data_dir)) from e
  train_split = train_split or task.train_split
  test_split = test_split or task.test_split

  def read(split, shuffle):
    try:
      ds = builder.as_dataset(
          split=split, shuffle_files=shuffle,
          read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
    except AssertionError as e:
      if 'could not find data' in str(e) or 'download_and_prepare' in str(e):
        raise FileNotFoundError(
            _missing_message(name, task, builder, data_dir)) from e
      raise

    def select(example):
      label = example
      for key in task.label:
        label = label[key]
      audio = tf.cast(example['audio'], tf.float32)
      if task.scale != 1.0:
        audio = audio * task.scale
      return tf.reshape(audio, [-1]), tf.cast(label, tf.int32)

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)

  train = data._take(read(train_split, max_train_examples is None),  # pylint: disable=protected-access
                     max_train_examples)
  test = data._take(read(test_split, False), max_test_examples)  # pylint: disable=protected-access

  def count(ds, split, full):
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
      return cardinality
    try:
      return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
      return full

  return _Source(train, test, name, task.num_classes,
                 count(train, train_split, task.num_train),
                 count(test, test_split, task.num_test))


def _synthetic_source(*, sample_rate, max_train_examples,
                      max_test_examples) -> _Source:
  settings = synthetic_audio_settings()
  limit = lambda n, m: n if m is None else min(n, int(m))
  num_train = limit(settings['num_train'], max_train_examples)
  num_test = limit(settings['num_test'], max_test_examples)

  def make(split, n):
    return tf.data.Dataset.range(n).map(
        lambda i: synthetic_audio_example(
            i, split, settings['seed'], settings['clip_seconds'],
            sample_rate), num_parallel_calls=tf.data.AUTOTUNE)

  return _Source(make(0, num_train), make(1, num_test), SYNTHETIC_NAME, 8,
                 num_train, num_test, always_cache=True)


def _wav_files(root: str) -> Tuple[list, list, list]:
  """(sorted class names, file paths, labels) of a folder of class folders."""
  classes = data.class_folder_names(root, 'Audio', WAV_FOLDER_LAYOUT)
  paths, labels = [], []
  for label, name in enumerate(classes):
    for directory, _, files in sorted(tf.io.gfile.walk(
        os.path.join(root, name))):
      for f in sorted(files):
        if f.lower().endswith(WAV_EXTENSIONS):
          paths.append(os.path.join(directory, f))
          labels.append(label)
  if not paths:
    raise ValueError(
        f'Audio folder {root!r} has class sub-folders {classes} but no .wav '
        f'files in them. Expected layout: {WAV_FOLDER_LAYOUT}.')
  return classes, paths, labels


def wav_sample_rate(path: str) -> int:
  """The sample rate in a WAV header; a clear error for what decode_wav
  cannot read (it takes 16-bit PCM)."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f, wave.open(f) as w:
      if w.getsampwidth() != 2:
        raise ValueError(
            f'{path}: {8 * w.getsampwidth()}-bit samples; tf.audio.decode_wav '
            'reads 16-bit PCM WAV only (convert with e.g. `sox in.wav -b 16 '
            'out.wav`).')
      return int(w.getframerate())
  except (wave.Error, EOFError) as e:
    raise ValueError(f'{path} is not a 16-bit PCM WAV file ({e}); '
                     'tf.audio.decode_wav reads 16-bit PCM WAV only.') from e


def _check_rates(paths: Sequence[str], sample_rate: int, allow_resample: bool):
  wrong = [(p, r) for p in paths if (r := wav_sample_rate(p)) != sample_rate]
  if wrong and not allow_resample:
    examples = ', '.join(f'{p} ({r} Hz)' for p, r in wrong[:3])
    raise ValueError(
        f'{len(wrong)} of {len(paths)} WAV files are not at the expected '
        f'{sample_rate} Hz, e.g. {examples}. Resample them (e.g. `sox in.wav '
        f'-r {sample_rate} out.wav`), or set audio_datasets.resample = True '
        'to resample while reading, or bind audio_datasets.sample_rate (and '
        'mel_frontend.sample_rate) to their rate.')
  if wrong:
    logging.info('%d of %d WAV files will be resampled to %d Hz.', len(wrong),
                 len(paths), sample_rate)


def decode_wav_file(path: tf.Tensor, sample_rate: int) -> tf.Tensor:
  """float32 [T] mono samples in [-1, 1] of a 16-bit WAV, at `sample_rate`
  (resampled from the file's rate if it differs; channels averaged)."""
  audio, rate = tf.audio.decode_wav(tf.io.read_file(path))
  audio = tf.reduce_mean(audio, axis=1)
  return resample(audio, rate, sample_rate)


def _folder_split(name: str, seed: int, test_split):
  """(classes, (train paths, labels), (test paths, labels)) of a folder set."""
  train_dir, test_dir = data._parse_folder_name(name)  # pylint: disable=protected-access
  classes, paths, labels = _wav_files(train_dir)
  if test_dir is not None:
    if test_split is not None:
      raise ValueError('test_split is not used with a separate test folder.')
    test_classes, test_paths, test_labels = _wav_files(test_dir)
    if test_classes != classes:
      raise ValueError(
          f'The test folder {test_dir!r} has class folders {test_classes}, '
          f'the train folder {train_dir!r} has {classes}: they must match.')
    return classes, (paths, labels), (test_paths, test_labels)
  order = np.random.default_rng(seed).permutation(len(paths))
  fraction = data._folder_test_fraction(test_split, 'audio')  # pylint: disable=protected-access
  num_test = int(round(fraction * len(paths)))
  test_idx, train_idx = np.sort(order[:num_test]), np.sort(order[num_test:])
  pick = lambda idx: ([paths[i] for i in idx], [labels[i] for i in idx])
  return classes, pick(train_idx), pick(test_idx)


def _folder_source(name: str, *, seed, train_split, test_split, sample_rate,
                   allow_resample, max_train_examples,
                   max_test_examples) -> _Source:
  if train_split:
    raise ValueError('Audio folders have no named splits: the train set is '
                     'the (first) folder; test_split is the held-out fraction '
                     'of a single folder.')
  classes, (train_paths, train_labels), (test_paths, test_labels) = (
      _folder_split(name, seed, test_split))
  limit = lambda items, m: items if m is None else items[:int(m)]
  train_paths = limit(train_paths, max_train_examples)
  train_labels = limit(train_labels, max_train_examples)
  test_paths = limit(test_paths, max_test_examples)
  test_labels = limit(test_labels, max_test_examples)
  _check_rates(train_paths + test_paths, sample_rate, allow_resample)

  def make(paths, labels):
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))
    return ds.map(lambda p, y: (decode_wav_file(p, sample_rate), y),
                  num_parallel_calls=tf.data.AUTOTUNE)

  logging.info('Audio folder %s: %d classes %s, %d train / %d test files.',
               name, len(classes), classes, len(train_paths), len(test_paths))
  return _Source(make(train_paths, train_labels), make(test_paths, test_labels),
                 name, len(classes), len(train_paths), len(test_paths))


def _check_name(name) -> str:
  return data.check_dataset_name(name, list(TFDS_TASKS) + [SYNTHETIC_NAME],
                                 KNOWN_DATASETS, what='audio dataset')


def _window_samples(window_seconds: float, sample_rate: int) -> int:
  window = int(round(window_seconds * sample_rate))
  if window < 1:
    raise ValueError(f'window_seconds={window_seconds} at {sample_rate} Hz is '
                     'less than one sample.')
  return window


# ----------------------------------------------------------------------------
# The public entry points.


# `seed` is given by the training loop (train.seed / --seed): not bindable.
@gin.configurable(module='diffstride', denylist=['seed'])
def audio_datasets(
    name: str = 'speech_commands',
    *,
    data_dir=None,
    download: bool = False,
    batch_size: int = 256,
    eval_batch_size=None,
    sample_rate: int = SAMPLE_RATE,
    window_seconds: float = 1.0,
    max_eval_seconds: Optional[float] = None,
    normalize: bool = True,
    target_db: float = TARGET_DB,
    max_gain_db: float = MAX_GAIN_DB,
    resample: bool = True,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    train_split=None,
    test_split=None,
    cache: bool = False,
    max_train_examples=None,
    max_test_examples=None,
) -> Tuple[tf.data.Dataset, tf.data.Dataset, data.DatasetInfo]:
  """(train, test, info) for audio classification; see the module docstring.

  Args:
    name: a TFDS task ('speech_commands', 'crema_d', 'voxforge', 'voxceleb',
      'nsynth_instrument', 'nsynth_pitch'), 'synthetic_audio', or
      'folder:/root' / 'folder:/train_root,/test_root'.
    data_dir: TFDS data directory (default: env TFDS_DATA_DIR, then TFDS's
      default).
    download: let TFDS download and prepare a missing dataset.
    batch_size / eval_batch_size: train / test batch sizes (eval default:
      batch_size).
    sample_rate: of the waveforms (TFDS tasks are 16 kHz; folders are
      resampled to it).
    window_seconds: the training crop, and the window of whole-clip
      evaluation (1 s, as in LEAF and the paper).
    max_eval_seconds: cut test clips to at most this many whole windows'
      worth (None: whole clips).
    normalize: LEAF's loudness normalisation (of each train crop, of each
      test window) with `target_db` and `max_gain_db`.
    resample: folders: resample WAV files at another rate (False: error).
    shuffle_buffer: train shuffle buffer (examples).
    seed: shuffling, crops and the folder hold-out.
    train_split / test_split: TFDS split names (defaults: train / test); for
      a single folder, test_split is the held-out fraction.
    cache: cache the decoded clips in memory (before cropping);
      'synthetic_audio' is always cached (generated once).
    max_train_examples / max_test_examples: use only that many clips.

  Raises:
    ValueError: unknown name, bad arguments, a folder without class folders
      or WAV files, or WAV files at another rate with resample=False.
    FileNotFoundError: a TFDS dataset is not prepared (and download=False), or
      a folder does not exist.
  """
  key = _check_name(name)
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  eval_batch_size = int(eval_batch_size or batch_size)
  window = _window_samples(window_seconds, sample_rate)
  max_windows = None
  if max_eval_seconds is not None:
    max_windows = max(int(round(max_eval_seconds / window_seconds)), 1)
  if key.startswith(FOLDER_PREFIX):
    source = _folder_source(
        key, seed=seed, train_split=train_split, test_split=test_split,
        sample_rate=sample_rate, allow_resample=resample,
        max_train_examples=max_train_examples,
        max_test_examples=max_test_examples)
  elif key == SYNTHETIC_NAME:
    if train_split or test_split:
      raise ValueError(f'{SYNTHETIC_NAME} has no named splits; bind '
                       'synthetic_audio_settings.num_train / num_test.')
    source = _synthetic_source(sample_rate=sample_rate,
                               max_train_examples=max_train_examples,
                               max_test_examples=max_test_examples)
  else:
    if sample_rate != SAMPLE_RATE:
      raise ValueError(f"'{key}' is stored at {SAMPLE_RATE} Hz; got "
                       f'sample_rate={sample_rate}.')
    source = _tfds_source(
        key, data_dir=data_dir, download=download, seed=seed,
        train_split=train_split, test_split=test_split,
        max_train_examples=max_train_examples,
        max_test_examples=max_test_examples)
  num_classes = source.num_classes
  info = data.DatasetInfo(source.name, num_classes, (window,),
                          source.num_train, source.num_test)

  def train_map(example, random):
    audio, label = example
    crop = random_crop_or_pad(
        audio, window, tf.stack([random, tf.constant(seed, tf.int64)]))
    if normalize:
      crop = loudness_normalization(crop, target_db, max_gain_db)
    crop.set_shape([window])
    return crop, tf.one_hot(label, num_classes, dtype=tf.float32)

  def test_map(audio, label):
    clip = whole_clip_windows(audio, window, max_windows, target_db,
                              max_gain_db, normalize)
    return clip, tf.one_hot(label, num_classes, dtype=tf.float32)

  train, test = source.train, source.test
  if cache or source.always_cache:
    train, test = train.cache(), test.cache()
  train = data.shuffled_batches(train, train_map, batch_size, seed,
                                shuffle_buffer, info.num_train_examples)
  train = train.prefetch(tf.data.AUTOTUNE)
  test = test.map(test_map, num_parallel_calls=tf.data.AUTOTUNE)
  test = test.padded_batch(eval_batch_size, padded_shapes=([None], [None]))
  test = test.prefetch(tf.data.AUTOTUNE)
  return train, test, info


@gin.configurable(module='diffstride')
def audio_dataset_info(name: Optional[str] = None) -> data.DatasetInfo:
  """The DatasetInfo `audio_datasets()` would return under the current gin
  bindings, without reading or generating any audio (for `--dry_run`).

  TFDS counts are the full split sizes (0 where unknown until the dataset is
  prepared: voxforge, voxceleb); folder counts are file counts.
  """
  get = lambda p, d: data._gin_value('audio_datasets', p, d)  # pylint: disable=protected-access
  key = _check_name(name if name is not None else get('name',
                                                       'speech_commands'))
  sample_rate = int(get('sample_rate', SAMPLE_RATE))
  window = _window_samples(get('window_seconds', 1.0), sample_rate)
  max_train, max_test = (get('max_train_examples', None),
                         get('max_test_examples', None))
  limit = lambda n, m: n if m is None else min(n, int(m))
  if key.startswith(FOLDER_PREFIX):
    classes, (train, _), (test, _) = _folder_split(key, 0,
                                                   get('test_split', None))
    num_classes, num_train, num_test = len(classes), len(train), len(test)
  elif key == SYNTHETIC_NAME:
    settings = synthetic_audio_settings()
    num_classes = 8
    num_train, num_test = settings['num_train'], settings['num_test']
  else:
    task = TFDS_TASKS[key]
    num_classes, num_train, num_test = (task.num_classes, task.num_train,
                                        task.num_test)
  return data.DatasetInfo(key, num_classes, (window,),
                          limit(num_train, max_train),
                          limit(num_test, max_test))
