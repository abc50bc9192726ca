"""Audio classification datasets: the paper's tasks, WAV folders, and a
built-in synthetic set.

`audio_datasets(name, ...)` returns `(train, test, info)` like
`images.image_datasets`: two batched data sets of `(waveforms, labels)` with
float32 mono waveforms and float32 one-hot labels `[B, K]` (`tf.data`, or
NumPy batches, `array_batches.ArrayBatches`, for the sets the project reads
itself: see `input_pipeline`),
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
    largest number of windows in the batch (the shorter clips zero-padded
    at the end). `audio_model.AudioClassifier`
    cuts such inputs into consecutive windows, classifies each and averages
    the logits over the windows that are not all zeros (the padding).

Loudness normalisation (LEAF's `loudness_normalization`, see `waveforms`):
x * min(10^(30/20), 10^(15/20) / (std(x) + 1e-9)); an all-zero window stays
zero. The crops, windows and normalisation are written once, in NumPy
(`waveforms`): the NumPy batches call them, tf.data through
`tf.numpy_function`.

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
  * 'folder:/root' or 'folder:/train_root,/test_root' (`WavFolderSource`,
    read in NumPy: no TensorFlow needed):
    one sub-folder of WAV files per class (16-bit PCM, any sample rate:
    resampled to `sample_rate` unless `resample=False`, which makes a
    mismatch an error). A single folder is split into a seeded hold-out of
    `test_split` (default 20%) of its files. This is how the paper's tasks
    that TFDS does not carry (acoustic scenes, birdsong) are read.
  * 'synthetic_audio' (`SyntheticAudioSource`): the built-in set
    (`synthetic.synthetic_audio_example`), generated in memory by NumPy, no
    files, no network.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import gin
import numpy as np

from diffstride.experiments import optional
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import batch_augmentation
from diffstride.experiments.data import batching
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data import waveforms
from diffstride.experiments.data.audio_sources import AudioClips
from diffstride.experiments.data.audio_sources import AudioSource
from diffstride.experiments.data.audio_sources import ClipAudioSource
from diffstride.experiments.data.audio_sources import SAMPLE_RATE
from diffstride.experiments.data.audio_sources import SYNTHETIC_NAME
from diffstride.experiments.data.audio_sources import SyntheticAudioSource
from diffstride.experiments.data.audio_sources import TFDS_TASKS
from diffstride.experiments.data.audio_sources import TfdsAudioSource
from diffstride.experiments.data.sources import DatasetInfo
from diffstride.experiments.data.wav_folders import WavFolderSource
from diffstride.experiments.optional import tf

FOLDER_PREFIX = sources.FOLDER_PREFIX
KNOWN_DATASETS = tuple(TFDS_TASKS) + (SYNTHETIC_NAME,
                                      FOLDER_PREFIX + '/path/to/class_folders')


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


@dataclasses.dataclass(frozen=True)
class ClipInputs(array_batches.ExampleReader):
  """A batch's waveforms from `clips`: `transform(clip [T], rng)` of each
  (a train crop, or a test clip's windows), zero-padded at the end to the
  longest: float32 [B, T_max] (as tf.data's `padded_batch`)."""
  clips: AudioClips
  transform: Callable[[np.ndarray, np.random.Generator], np.ndarray]

  def __len__(self) -> int:
    return len(self.clips)

  def read(self, indices, rng):
    return waveforms.stack_padded(
        [self.transform(self.clips.read(int(i)), rng) for i in indices])


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
    input_pipeline: str = 'auto',
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
    input_pipeline: how the batches reach `fit`: 'tf.data' (datasets);
      'numpy' (`array_batches.ArrayBatches`, `keras.utils.PyDataset`s of
      NumPy batches: 'synthetic_audio' and folders, needs no TensorFlow);
      'auto' (the default): 'numpy' for those on a backend other than
      TensorFlow, else 'tf.data'.
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
  train_window = functools.partial(
      waveforms.train_window, window=window, normalize=normalize,
      target_db=target_db, max_gain_db=max_gain_db)
  test_windows = functools.partial(
      waveforms.whole_clip_windows, window=window, max_windows=max_windows,
      target_db=target_db, max_gain_db=max_gain_db, normalize=normalize)
  if sources.numpy_pipeline(input_pipeline,
                            isinstance(source, ClipAudioSource),
                            source.describe().name,
                            f"'{SYNTHETIC_NAME}' and WAV folders"):
    splits = source.clips()
    if cache:
      splits = dataclasses.replace(splits, train=splits.train.cached(),
                                   test=splits.test.cached())
    train_plan = array_batches.BatchPlan(
        ClipInputs(splits.train, lambda clip, rng: train_window(clip, rng=rng)),
        splits.train.labels, splits.info.num_classes, batch_size, seed,
        shuffle_window=shuffle_buffer, drop_remainder=True)
    test_plan = array_batches.BatchPlan(
        ClipInputs(splits.test, lambda clip, _: test_windows(clip)),
        splits.test.labels, splits.info.num_classes, eval_batch_size, seed)
    train = array_batches.redrawn_passes(train_plan)
    info = splits.info.with_train_epochs(
        train, functools.partial(array_batches.fixed_pass, train_plan))
    return train, array_batches.ordered_pass(test_plan), info

  optional.require_tensorflow(f'The audio dataset {name!r} (read by tf.data)')
  examples = source.load()
  info = examples.info
  num_classes = info.num_classes

  def train_map(example, random):
    audio, label = example
    crop = tf.numpy_function(
        lambda samples, key: train_window(
            samples, rng=batch_augmentation.generator([key, seed])),
        [audio, random], tf.float32, stateful=False)
    crop.set_shape([window])
    return crop, tf.one_hot(label, num_classes, dtype=tf.float32)

  def test_map(audio, label):
    clip = tf.numpy_function(test_windows, [audio], tf.float32,
                             stateful=False)
    clip.set_shape([None])
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
