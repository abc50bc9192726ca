"""Audio sources: what every audio source provides, the paper's TFDS tasks
and the built-in synthetic set.

  * `AudioSource`: `describe()` (a `DatasetInfo` whose `image_shape` is
    `(window_samples,)`, no data read) and `load()` (unbatched float32 [T]
    waveforms at the sample rate and int32 labels, as `tf.data`).
  * `ClipAudioSource`: a source that reads its clips itself, in NumPy
    (`clips()`: `AudioClips`, one clip at a time); its `load()` is those
    clips through `tf.numpy_function`, so both input pipelines read the
    same samples.
  * `TfdsAudioSource`: the paper's tasks through tensorflow-datasets
    (`TFDS_TASKS`: how to read each), at 16 kHz (tf.data only).
  * `SyntheticAudioSource`: 'synthetic_audio', generated in memory.

WAV folders are in `wav_folders`; `audio.audio_source` picks the source of a
dataset name and `audio.audio_datasets` builds the pipelines.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from diffstride.experiments.optional import tf
from diffstride.experiments.optional import tfds

from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data import waveforms
from diffstride.experiments.data.sources import DatasetInfo

SAMPLE_RATE = waveforms.SAMPLE_RATE
SYNTHETIC_NAME = synthetic.SYNTHETIC_AUDIO_NAME


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
class AudioClips:
  """The clips of one split, read one at a time.

  Attributes:
    labels: int32 [N].
    read: `read(i)` -> float32 [T_i] waveform of clip i at the sample rate.
    length: T, where every clip has T samples (a static shape for tf.data);
      None: lengths vary.
  """
  labels: np.ndarray
  read: Callable[[int], np.ndarray]
  length: Optional[int] = None

  def __len__(self) -> int:
    return len(self.labels)

  def cached(self) -> 'AudioClips':
    """The same clips, each kept in memory once read."""
    store = {}

    def read(index: int) -> np.ndarray:
      if index not in store:
        store[index] = self.read(index)
      return store[index]

    return AudioClips(self.labels, read, self.length)

  def dataset(self) -> tf.data.Dataset:
    """(float32 [T] waveform, int32 label) of each clip, in order, as a
    `tf.data.Dataset` (read through `tf.numpy_function`)."""
    return sources.indexed_examples(self.read, self.labels, [self.length])


@dataclasses.dataclass(frozen=True)
class ClipSplits:
  """A `ClipAudioSource`'s train and test clips and its `DatasetInfo`."""
  train: AudioClips
  test: AudioClips
  info: DatasetInfo


class ClipAudioSource(AudioSource):
  """An audio source that reads (or makes) its clips itself, in NumPy: the
  NumPy batches read `clips()` directly, `load()` reads them into tf.data."""

  @abc.abstractmethod
  def clips(self) -> ClipSplits:
    """The train and test clips (float32 [T] at the sample rate)."""

  def load(self) -> sources.Examples:
    splits = self.clips()
    return sources.Examples(splits.train.dataset(), splits.test.dataset(),
                            splits.info)


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
class SyntheticAudioSource(ClipAudioSource):
  """'synthetic_audio', generated in memory from `settings` (its sizes
  already cut to the max_*_examples) at `sample_rate`."""
  settings: synthetic.SyntheticAudioSettings
  window_samples: int
  sample_rate: int = SAMPLE_RATE
  always_cache = True

  def describe(self) -> DatasetInfo:
    return DatasetInfo(SYNTHETIC_NAME, self.settings.num_classes,
                       (self.window_samples,), self.settings.num_train,
                       self.settings.num_test)

  def clips(self) -> ClipSplits:
    info = self.describe()

    def split(index: int, num: int) -> AudioClips:
      waves, labels = self.settings.arrays(index, num, self.sample_rate)
      return AudioClips(labels, waves.__getitem__, waves.shape[1])

    return ClipSplits(split(0, info.num_train_examples),
                      split(1, info.num_test_examples), info)
