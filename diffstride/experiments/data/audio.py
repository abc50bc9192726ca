"""Audio classification datasets: the paper's tasks, WAV folders, and a
built-in synthetic set.

`audio_datasets(name, ...)` returns `(train, test, info)` like
`images.image_datasets`: two batched `tf.data.Dataset`s of `(waveforms,
labels)` with float32 mono waveforms and float32 one-hot labels `[B, K]`,
and a `DatasetInfo` whose `image_shape` is `(window_samples,)`, the shape of
one model input (16000 for 1 s at 16 kHz). `audio_dataset_info()` is that
`DatasetInfo` without reading or generating any audio (the source's
`describe()`, for `train(dry_run=True)`).

  * train: random `window_seconds` crops (clips shorter than that are
    zero-padded at the end, as in LEAF), loudness-normalised, `[B, W]`
    (W = window samples), shuffled, full batches only when there is at least
    one full batch; the training loop feeds epoch e the fixed pass
    `info.train_epochs.of_epoch(e)` (see batching.py).
  * test: whole clips, zero-padded at the end to a whole number of windows
    (optionally cut to `max_eval_seconds`), each window loudness-normalised
    on its own, batched with `padded_batch`: `[B, k W]` where k is the
    largest number of windows in the batch. `audio_model.AudioClassifier`
    cuts such inputs into consecutive windows, classifies each and averages
    the logits over the windows that are not all zeros (the padding).

Loudness normalisation (LEAF's `loudness_normalization`, see `waveforms`):
x * min(10^(30/20), 10^(15/20) / (std(x) + 1e-9)); an all-zero window stays
zero.

Datasets (`name`), each an `AudioSource` (`audio_source`):

  * TFDS (tensorflow-datasets, `TfdsAudioSource`), read from `data_dir`
    (else env `TFDS_DATA_DIR`, else TFDS's default); nothing is downloaded
    unless `download=True`, a missing dataset raises `FileNotFoundError`
    saying how to get it:
      'speech_commands' (keyword spotting, 12 classes), 'crema_d' (emotion,
      6), 'voxforge' (language, 6; manual download), 'voxceleb' (speaker
      identification, 1251 speakers in TFDS's 1252-way label; manual
      download), 'nsynth_instrument' (NSynth instrument family, 11) and
      'nsynth_pitch' (NSynth pitch, 128 MIDI pitches), both from TFDS's
      'nsynth/full'. All are 16 kHz.
  * 'folder:/root' or 'folder:/train_root,/test_root' (`WavFolderSource`):
    one sub-folder of WAV files per class (16-bit PCM, any sample rate:
    resampled to `sample_rate` unless `resample=False`, which makes a
    mismatch an error). A single folder is split into a seeded hold-out of
    `test_split` (default 20%) of its files. This is how the paper's tasks
    that TFDS does not carry (acoustic scenes, birdsong) are read.
  * 'synthetic_audio' (`SyntheticAudioSource`): the built-in set
    (`synthetic.synthetic_audio_example`), generated on the fly, no files,
    no network.
"""

import abc
import dataclasses
import functools
import os
import wave
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import gin
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride.experiments.data import batching
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data import waveforms
from diffstride.experiments.data.sources import DatasetInfo

SAMPLE_RATE = waveforms.SAMPLE_RATE
SYNTHETIC_NAME = synthetic.SYNTHETIC_AUDIO_NAME
FOLDER_PREFIX = sources.FOLDER_PREFIX
WAV_EXTENSIONS = ('.wav',)
WAV_FOLDER_LAYOUT = ('root/class_a/xxx.wav, root/class_a/xxy.wav, ..., '
                     'root/class_b/yyy.wav, ... (one sub-folder per class, '
                     '16-bit PCM WAV files inside)')


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
# WAV files.


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


def check_wav_sample_rates(paths: Sequence[str], sample_rate: int,
                           allow_resample: bool):
  """Reads the WAV headers: ValueError if some files are not at
  `sample_rate` and not `allow_resample` (or not 16-bit PCM)."""
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
  return waveforms.resample(audio, rate, sample_rate)


def wav_class_folders(root: str) -> Tuple[List[str], List[str], List[int]]:
  """(sorted class names, file paths, labels) of a folder of class folders
  of WAV files, in a fixed order (classes, then sorted directories and
  files)."""
  classes = sources.class_folder_names(root, 'Audio', WAV_FOLDER_LAYOUT)
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


# ----------------------------------------------------------------------------
# Audio sources: unbatched (float32 [T] waveform at `sample_rate`, int label).


class AudioSource(sources.Source):
  """An audio dataset. Its `DatasetInfo.image_shape` is `(window_samples,)`,
  the model input: a window of the clips `load()` reads."""

  # Generated data: cache rather than regenerate, whatever `cache` says.
  always_cache: bool = False

  @abc.abstractmethod
  def load(self) -> sources.Examples:
    """(float32 [T] waveform at the sample rate, int32 label) pairs."""


@dataclasses.dataclass(frozen=True)
class TfdsAudioSource(AudioSource):
  """One of the paper's TFDS tasks (`TFDS_TASKS`), at 16 kHz. `describe()`
  counts are the full split sizes (0 where unknown until prepared:
  voxforge, voxceleb), `load()`'s those of the splits actually read."""
  name: str
  window_samples: int
  data_dir: Optional[str] = None
  download: bool = False
  seed: int = 0
  train_split: Optional[str] = None
  test_split: Optional[str] = None
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  @property
  def task(self) -> AudioTask:
    return TFDS_TASKS[self.name]

  def describe(self) -> DatasetInfo:
    return DatasetInfo(
        self.name, self.task.num_classes, (self.window_samples,),
        sources.limit_count(self.task.num_train, self.max_train_examples),
        sources.limit_count(self.task.num_test, self.max_test_examples))

  def _missing_message(self, builder, data_dir: Optional[str]) -> str:
    task = self.task
    manual_steps = None
    if task.manual:
      manual_steps = (f'It needs a manual download: get {task.manual}, put '
                      'the files')
    return sources.missing_tfds_message(
        f"Audio dataset '{self.name}' (TFDS '{task.tfds_name}')",
        task.tfds_name, builder, data_dir, 'audio_datasets',
        manual_steps=manual_steps)

  def load(self) -> sources.Examples:
    info = self.describe()
    task = self.task
    data_dir = sources.resolve_data_dir(self.data_dir)
    builder = tfds.builder(task.tfds_name, data_dir=data_dir)
    missing = functools.partial(self._missing_message, builder, data_dir)
    if self.download:
      sources.prepare_tfds(builder, self.name, missing)
    train_split = self.train_split or task.train_split
    test_split = self.test_split or task.test_split

    def select(example):
      label = example
      for key in task.label:
        label = label[key]
      audio = tf.cast(example['audio'], tf.float32)
      if task.scale != 1.0:
        audio = audio * task.scale
      return tf.reshape(audio, [-1]), tf.cast(label, tf.int32)

    def read(split, shuffle):
      ds = sources.read_tfds_split(
          builder, split, missing, shuffle_files=shuffle,
          read_config=tfds.ReadConfig(shuffle_seed=self.seed,
                                      shuffle_reshuffle_each_iteration=False,
                                      try_autocache=False))
      return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)

    train = sources.take_examples(
        read(train_split, self.max_train_examples is None),
        self.max_train_examples)
    test = sources.take_examples(read(test_split, False),
                                 self.max_test_examples)
    info = info.with_counts(
        sources.tfds_num_examples(train, builder, train_split, task.num_train),
        sources.tfds_num_examples(test, builder, test_split, task.num_test))
    return sources.Examples(train, test, info)


@dataclasses.dataclass(frozen=True)
class SyntheticAudioSource(AudioSource):
  """'synthetic_audio', generated on the fly from `settings` (its sizes
  already cut to the max_*_examples) at `sample_rate`, then cached."""
  settings: synthetic.SyntheticAudioSettings
  window_samples: int
  sample_rate: int = SAMPLE_RATE
  always_cache = True

  def describe(self) -> DatasetInfo:
    return DatasetInfo(SYNTHETIC_NAME, self.settings.num_classes,
                       (self.window_samples,), self.settings.num_train,
                       self.settings.num_test)

  def load(self) -> sources.Examples:
    info = self.describe()
    return sources.Examples(
        self.settings.examples(0, info.num_train_examples, self.sample_rate),
        self.settings.examples(1, info.num_test_examples, self.sample_rate),
        info)


@dataclasses.dataclass(frozen=True)
class WavFiles:
  """The files of one split of a WAV folder dataset: paths and labels."""
  paths: List[str]
  labels: List[int]

  def limited(self, max_files: Optional[int]) -> 'WavFiles':
    """The first `max_files` files (None: all)."""
    if max_files is None:
      return self
    return WavFiles(self.paths[:int(max_files)], self.labels[:int(max_files)])


@dataclasses.dataclass(frozen=True)
class WavFolderSplit:
  """A WAV folder dataset's classes and train / test files."""
  classes: List[str]
  train: WavFiles
  test: WavFiles


@dataclasses.dataclass(frozen=True)
class WavFolderSource(AudioSource):
  """'folder:/root' or 'folder:/train_root,/test_root' of WAV class folders,
  decoded (and resampled) to `sample_rate`. The files are listed once
  (`split`): `describe()` counts them, `load()` reads them."""
  name: str
  window_samples: int
  sample_rate: int = SAMPLE_RATE
  allow_resample: bool = True
  seed: int = 0
  train_split: Optional[str] = None
  test_split: Optional[float] = None
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  @functools.cached_property
  def split(self) -> WavFolderSplit:
    """The classes and the train / test files (after max_*_examples)."""
    if self.train_split:
      raise ValueError('Audio folders have no named splits: the train set is '
                       'the (first) folder; test_split is the held-out '
                       'fraction of a single folder.')
    train_dir, test_dir = sources.parse_folder_name(self.name)
    classes, paths, labels = wav_class_folders(train_dir)
    if test_dir is not None:
      if self.test_split is not None:
        raise ValueError('test_split is not used with a separate test folder.')
      test_classes, test_paths, test_labels = wav_class_folders(test_dir)
      if test_classes != classes:
        raise ValueError(
            f'The test folder {test_dir!r} has class folders {test_classes}, '
            f'the train folder {train_dir!r} has {classes}: they must match.')
      train, test = WavFiles(paths, labels), WavFiles(test_paths, test_labels)
    else:
      train_idx, test_idx = sources.held_out_split(
          len(paths), sources.folder_test_fraction(self.test_split, 'audio'),
          self.seed)
      pick = lambda idx: WavFiles([paths[i] for i in idx],
                                  [labels[i] for i in idx])
      train, test = pick(train_idx), pick(test_idx)
    return WavFolderSplit(classes, train.limited(self.max_train_examples),
                          test.limited(self.max_test_examples))

  def describe(self) -> DatasetInfo:
    split = self.split
    return DatasetInfo(self.name, len(split.classes), (self.window_samples,),
                       len(split.train.paths), len(split.test.paths))

  def load(self) -> sources.Examples:
    info = self.describe()
    split = self.split
    check_wav_sample_rates(split.train.paths + split.test.paths,
                           self.sample_rate, self.allow_resample)

    def make(files: WavFiles) -> tf.data.Dataset:
      ds = tf.data.Dataset.from_tensor_slices(
          (tf.constant(files.paths, tf.string),
           tf.constant(files.labels, tf.int32)))
      return ds.map(lambda p, y: (decode_wav_file(p, self.sample_rate), y),
                    num_parallel_calls=tf.data.AUTOTUNE)

    logging.info('Audio folder %s: %d classes %s, %d train / %d test files.',
                 self.name, len(split.classes), split.classes,
                 info.num_train_examples, info.num_test_examples)
    return sources.Examples(make(split.train), make(split.test), info)


def check_audio_dataset_name(name) -> str:
  """The key of an audio dataset name (see `sources.check_dataset_name`)."""
  return sources.check_dataset_name(name,
                                    list(TFDS_TASKS) + [SYNTHETIC_NAME],
                                    KNOWN_DATASETS, what='audio dataset')


def window_samples(window_seconds: float, sample_rate: int) -> int:
  """Samples in a window of `window_seconds` (at least one)."""
  window = int(round(window_seconds * sample_rate))
  if window < 1:
    raise ValueError(f'window_seconds={window_seconds} at {sample_rate} Hz is '
                     'less than one sample.')
  return window


def audio_source(name: str, *, window: int, data_dir=None,
                 download: bool = False, sample_rate: int = SAMPLE_RATE,
                 allow_resample: bool = True, seed: int = 0, train_split=None,
                 test_split=None, max_train_examples=None,
                 max_test_examples=None) -> AudioSource:
  """The `AudioSource` of a dataset name (see `audio_datasets`' arguments);
  `window`: the model input's samples.

  'synthetic_audio' takes its sizes and seed from `synthetic_audio_settings`
  (its gin bindings), the max_*_examples on top.
  """
  key = check_audio_dataset_name(name)
  if key.startswith(FOLDER_PREFIX):
    return WavFolderSource(
        key, window, sample_rate=sample_rate, allow_resample=allow_resample,
        seed=seed, train_split=train_split, test_split=test_split,
        max_train_examples=max_train_examples,
        max_test_examples=max_test_examples)
  if key == SYNTHETIC_NAME:
    if train_split or test_split:
      raise ValueError(f'{SYNTHETIC_NAME} has no named splits; bind '
                       'synthetic_audio_settings.num_train / num_test.')
    settings = synthetic.synthetic_audio_settings()
    settings = dataclasses.replace(
        settings,
        num_train=sources.limit_count(settings.num_train, max_train_examples),
        num_test=sources.limit_count(settings.num_test, max_test_examples))
    return SyntheticAudioSource(settings, window, sample_rate=sample_rate)
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f"'{key}' is stored at {SAMPLE_RATE} Hz; got "
                     f'sample_rate={sample_rate}.')
  return TfdsAudioSource(
      key, window, data_dir=data_dir, download=download, seed=seed,
      train_split=train_split, test_split=test_split,
      max_train_examples=max_train_examples,
      max_test_examples=max_test_examples)


# ----------------------------------------------------------------------------
# The public entry points.


# `seed` is given by the training loop (train.seed / --seed) and
# `describe_only` by `audio_dataset_info`: not bindable.
@gin.configurable(module='diffstride', denylist=['seed', 'describe_only'])
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
    target_db: float = waveforms.TARGET_DB,
    max_gain_db: float = waveforms.MAX_GAIN_DB,
    resample: bool = True,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    train_split=None,
    test_split=None,
    cache: bool = False,
    max_train_examples=None,
    max_test_examples=None,
    describe_only: bool = False,
):
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
    describe_only: return only the `DatasetInfo` (the source's `describe()`),
      without reading or generating any audio; what `audio_dataset_info`
      returns.

  Returns:
    (train, test, info): train batches (float32 waveforms [B, W], float32
    one-hot labels [B, K]), test batches ([B, k W], [B, K]); info alone with
    describe_only.

  Raises:
    ValueError: unknown name, bad arguments, a folder without class folders
      or WAV files, or WAV files at another rate with resample=False.
    FileNotFoundError: a TFDS dataset is not prepared (and download=False), or
      a folder does not exist.
  """
  check_audio_dataset_name(name)
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  eval_batch_size = int(eval_batch_size or batch_size)
  window = window_samples(window_seconds, sample_rate)
  max_windows = None
  if max_eval_seconds is not None:
    max_windows = max(int(round(max_eval_seconds / window_seconds)), 1)
  source = audio_source(
      name, window=window, data_dir=data_dir, download=download,
      sample_rate=sample_rate, allow_resample=resample, seed=seed,
      train_split=train_split, test_split=test_split,
      max_train_examples=max_train_examples,
      max_test_examples=max_test_examples)
  if describe_only:
    return source.describe()
  examples = source.load()
  info = examples.info
  num_classes = info.num_classes

  def train_map(example, random):
    audio, label = example
    crop = waveforms.random_crop_or_pad(
        audio, window, tf.stack([random, tf.constant(seed, tf.int64)]))
    if normalize:
      crop = waveforms.loudness_normalization(crop, target_db, max_gain_db)
    crop.set_shape([window])
    return crop, tf.one_hot(label, num_classes, dtype=tf.float32)

  def test_map(audio, label):
    clip = waveforms.whole_clip_windows(audio, window, max_windows, target_db,
                                        max_gain_db, normalize)
    return clip, tf.one_hot(label, num_classes, dtype=tf.float32)

  train_examples, test = examples.train, examples.test
  if cache or source.always_cache:
    train_examples, test = train_examples.cache(), test.cache()

  def train_batches(pass_seed, reshuffle: bool) -> tf.data.Dataset:
    """The batched train set: tf.data's reshuffled draws (`reshuffle`) or
    the fixed pass of `pass_seed` (see batching.py)."""
    return batching.shuffled_batches(
        train_examples, train_map, batch_size, pass_seed, shuffle_buffer,
        info.num_train_examples, reshuffle=reshuffle
    ).prefetch(tf.data.AUTOTUNE)

  train = train_batches(seed, reshuffle=True)
  info = info.with_train_epochs(
      train, lambda epoch: train_batches(batching.epoch_seed(seed, epoch),
                                         reshuffle=False))
  test = test.map(test_map, num_parallel_calls=tf.data.AUTOTUNE)
  test = test.padded_batch(eval_batch_size, padded_shapes=([None], [None]))
  test = test.prefetch(tf.data.AUTOTUNE)
  return train, test, info


@gin.configurable(module='diffstride')
def audio_dataset_info(name: Optional[str] = None) -> DatasetInfo:
  """The DatasetInfo `audio_datasets()` returns under the current gin
  bindings, without reading or generating any audio (for `--dry_run`):
  `audio_datasets(describe_only=True)`, `name` (if given) on top.

  TFDS counts are the full split sizes (0 where unknown until the dataset is
  prepared: voxforge, voxceleb); folder counts are file counts.
  """
  overrides = {} if name is None else dict(name=name)
  return audio_datasets(describe_only=True, **overrides)
