"""WAV folders: 'folder:/root' or 'folder:/train_root,/test_root'.

One sub-folder per class of 16-bit PCM WAV files (`WAV_FOLDER_LAYOUT`),
decoded to float32 mono at the task's sample rate (resampled if asked);
a single folder's test set is a seeded hold-out of its files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from diffstride.experiments import files
from diffstride.experiments.data import sources
from diffstride.experiments.data import waveforms
from diffstride.experiments.data.audio_sources import AudioClips
from diffstride.experiments.data.audio_sources import ClipAudioSource
from diffstride.experiments.data.audio_sources import ClipSplits
from diffstride.experiments.data.audio_sources import SAMPLE_RATE
from diffstride.experiments.data.sources import DatasetInfo

WAV_EXTENSIONS = ('.wav',)
WAV_FOLDER_LAYOUT = ('root/class_a/xxx.wav, root/class_a/xxy.wav, ..., '
                     'root/class_b/yyy.wav, ... (one sub-folder per class, '
                     '16-bit PCM WAV files inside)')


# ----------------------------------------------------------------------------
# WAV files.


def check_wav_sample_rates(paths: Sequence[str], sample_rate: int,
                           allow_resample: bool):
  """Reads the WAV headers: ValueError if some files are not at
  `sample_rate` and not `allow_resample` (or not 16-bit PCM)."""
  wrong = [(p, r) for p in paths
           if (r := waveforms.wav_sample_rate(p)) != sample_rate]
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


def wav_class_folders(root: str) -> Tuple[List[str], List[str], List[int]]:
  """(sorted class names, file paths, labels) of a folder of class folders
  of WAV files, in a fixed order (classes, then sorted directories and
  files)."""
  classes = sources.class_folder_names(root, 'Audio', WAV_FOLDER_LAYOUT)
  paths, labels = [], []
  for label, name in enumerate(classes):
    for directory, _, names in sorted(files.walk(os.path.join(root,
                                                               name))):
      for f in sorted(names):
        if f.lower().endswith(WAV_EXTENSIONS):
          paths.append(os.path.join(directory, f))
          labels.append(label)
  if not paths:
    raise ValueError(
        f'Audio folder {root!r} has class sub-folders {classes} but no .wav '
        f'files in them. Expected layout: {WAV_FOLDER_LAYOUT}.')
  return classes, paths, labels


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
class WavFolderSource(ClipAudioSource):
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

  def clips(self) -> ClipSplits:
    info = self.describe()
    split = self.split
    check_wav_sample_rates(split.train.paths + split.test.paths,
                           self.sample_rate, self.allow_resample)

    def make(wav_files: WavFiles) -> AudioClips:
      paths = wav_files.paths
      return AudioClips(
          np.asarray(wav_files.labels, np.int32),
          lambda i: waveforms.read_wav(paths[i], self.sample_rate))

    logging.info('Audio folder %s: %d classes %s, %d train / %d test files.',
                 self.name, len(split.classes), split.classes,
                 info.num_train_examples, info.num_test_examples)
    return ClipSplits(make(split.train), make(split.test), info)
