"""Where a dataset's examples come from: the `Source` abstraction, and the TFDS
and class-folder machinery that image and audio sources share.

A `Source` is one dataset with its settings. It has two views of the same
thing, computed by the same code:

  * `describe()`: its `DatasetInfo` (name, number of classes, shape of one
    model input, example counts), without reading or generating any data
    (what `train(dry_run=True)` needs);
  * `load()`: its unbatched train and test `tf.data.Dataset`s of
    `(raw example, int32/int64 label)`, with that same `DatasetInfo`
    (`Examples.info`). Sources whose split sizes are only known once the
    data is read (TFDS, image folders) replace the described counts by the
    counts of the data actually read (`DatasetInfo.with_counts`); everything
    else is `describe()`'s.

Shared here:
  * TFDS: `resolve_data_dir` (data_dir, else env TFDS_DATA_DIR, else TFDS's
    default), `prepare_tfds` (download=True), `read_tfds_split` and
    `missing_tfds_message` (a missing dataset is a `FileNotFoundError` saying
    how to get it; nothing is downloaded unless asked), `tfds_num_examples`.
  * Class folders ('folder:/root' or 'folder:/train_root,/test_root'):
    `parse_folder_name`, `class_folder_names`, `folder_test_fraction` and
    `held_out_split` (the seeded hold-out of a single folder).
  * `check_dataset_name`, `take_examples`, `limit_count`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

import keras
import numpy as np
from diffstride.experiments.optional import tf

from diffstride.experiments import files
from diffstride.experiments.data import batching

FOLDER_PREFIX = 'folder:'
# Held-out fraction of a single folder, when test_split is not given.
FOLDER_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know of a dataset, and its size.

  Attributes:
    name: the dataset's name ('cifar10', 'folder:/root', ...).
    num_classes: K, the number of classes (labels are one-hot [B, K]).
    image_shape: the shape of one model input: (H, W, C) for images,
      (window_samples,) for audio.
    num_train_examples: train examples (after `max_train_examples`).
    num_test_examples: test examples (after `max_test_examples`).
    train_epochs: the train set's fixed epoch passes, if the pipeline has
      them (`batching.EpochPasses`; the training loop's exact resume needs
      them); not part of the description's equality.
  """
  name: str
  num_classes: int
  image_shape: tuple
  num_train_examples: int
  num_test_examples: int
  train_epochs: Optional[batching.EpochPasses] = dataclasses.field(
      default=None, compare=False, repr=False)

  def with_counts(self, num_train_examples: int,
                  num_test_examples: int) -> 'DatasetInfo':
    """The same description with other example counts (measured ones)."""
    return dataclasses.replace(self, num_train_examples=num_train_examples,
                               num_test_examples=num_test_examples)

  def with_train_epochs(self, train: tf.data.Dataset,
                        of_epoch: Callable[[tf.Tensor], tf.data.Dataset]
                        ) -> 'DatasetInfo':
    """The same description, knowing `train`'s fixed epoch passes."""
    return dataclasses.replace(
        self, train_epochs=batching.EpochPasses(train, of_epoch))


@dataclasses.dataclass(frozen=True)
class Examples:
  """A source's unbatched train and test sets and their description.

  Attributes:
    train: `(raw example, label)` pairs; a raw example is a source's own
      format (uint8/float images [H, W, C], JPEG bytes, float32 waveforms
      [T]), a label an int scalar in [0, info.num_classes).
    test: the same, for the test split.
    info: `Source.describe()`, with measured counts where the source
      measures them.
  """
  train: tf.data.Dataset
  test: tf.data.Dataset
  info: DatasetInfo


class Source(abc.ABC):
  """One dataset with its settings: a description and its examples."""

  @abc.abstractmethod
  def describe(self) -> DatasetInfo:
    """The `DatasetInfo` of `load()`, without reading or generating data."""

  @abc.abstractmethod
  def load(self) -> Examples:
    """The unbatched train and test sets, with `describe()`'s info."""


# ----------------------------------------------------------------------------
# Counts.


def limit_count(num: int, max_num: Optional[int]) -> int:
  """`num` examples cut to at most `max_num` (None: no limit)."""
  return num if max_num is None else min(num, int(max_num))


def take_examples(ds: tf.data.Dataset, num: Optional[int]) -> tf.data.Dataset:
  """The first `num` examples of `ds` (None: all)."""
  return ds if num is None else ds.take(int(num))


def check_dataset_name(name, builtin: Sequence[str], known: Sequence[str],
                       what: str = 'dataset') -> str:
  """The lower-cased key of a built-in or TFDS dataset name, or a
  'folder:PATH' name as given; a ValueError listing `known` otherwise."""
  if not isinstance(name, str):
    raise ValueError(f'Dataset name must be a string, got {name!r}.')
  if name.startswith(FOLDER_PREFIX):
    return name
  key = name.strip().lower()
  if key in builtin:
    return key
  raise ValueError(f'Unknown {what} {name!r}. Known: {", ".join(known)}.')


# ----------------------------------------------------------------------------
# TensorFlow Datasets.


def resolve_data_dir(data_dir) -> Optional[str]:
  """`data_dir`, else env TFDS_DATA_DIR, else None (TFDS's default)."""
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or None
  return os.fspath(data_dir) if data_dir is not None else None


def missing_tfds_message(subject: str, tfds_name: str, builder,
                         data_dir: Optional[str], entry_point: str,
                         manual_steps: Optional[str] = None) -> str:
  """Why a TFDS dataset cannot be read, and how to get it.

  Args:
    subject: how the message names the dataset ("Dataset 'cifar10'").
    tfds_name: the TFDS builder name ('cifar10', 'nsynth/full').
    builder: its `tfds.core.DatasetBuilder` (for the folder it looked in).
    data_dir: the resolved data_dir (None: TFDS's default).
    entry_point: the function that takes download=True ('image_datasets').
    manual_steps: for a manual download, the start of the sentence saying
      what to get, up to the files ("It needs a manual download: get X, put
      the files"); the message goes on with " in <data_dir>/downloads/manual/".
  """
  searched = data_dir or os.path.dirname(os.path.dirname(
      os.fspath(builder.data_dir)))
  prepare = ('`python -c "import tensorflow_datasets as tfds; '
             f"tfds.builder('{tfds_name}', data_dir={searched!r})"
             '.download_and_prepare()"`')
  head = (f'{subject} is not prepared in data_dir {searched!r} (looked for '
          f'{os.fspath(builder.data_dir)}), and download=False never '
          'downloads. ')
  if manual_steps is not None:
    manual = os.path.join(searched, 'downloads', 'manual')
    return (head + f'{manual_steps} in {manual}/, then run {prepare} (or call '
            f'{entry_point} with download=True), or point data_dir / '
            'TFDS_DATA_DIR at a directory where it is already prepared.')
  return (head + f'On a machine with internet, run {prepare} (and copy '
          f'{os.path.join(searched, tfds_name.split("/")[0])} here if it is '
          f'another machine), or call {entry_point} with download=True, or '
          'point data_dir / TFDS_DATA_DIR at a directory where it is already '
          'prepared.')


def prepare_tfds(builder, name: str, missing_message: Callable[[], str]):
  """`builder.download_and_prepare()` (download=True), with clear errors.

  A manual download whose files are missing raises FileNotFoundError with
  `missing_message()`; a module TFDS needs but does not declare raises
  ModuleNotFoundError naming it.
  """
  try:
    builder.download_and_prepare()
  except AssertionError as e:
    if 'manual' not in str(e).lower():
      raise
    # Missing files in <data_dir>/downloads/manual.
    raise FileNotFoundError(missing_message()) from e
  except ModuleNotFoundError as e:
    # tensorflow-datasets 4.9 prepares data with `importlib_resources`
    # without declaring it as a dependency.
    raise ModuleNotFoundError(
        f'download=True: TFDS needs the module {e.name!r} to download and '
        f"prepare '{name}'; run `pip install {e.name}`.", name=e.name) from e


def read_tfds_split(builder, split: str, missing_message: Callable[[], str],
                    **as_dataset_kwargs) -> tf.data.Dataset:
  """`builder.as_dataset(split=split, ...)`; FileNotFoundError with
  `missing_message()` if the dataset is not prepared."""
  try:
    return builder.as_dataset(split=split, **as_dataset_kwargs)
  except AssertionError as e:
    # What TFDS raises for an unprepared dataset ("could not find data").
    if 'could not find data' in str(e) or 'download_and_prepare' in str(e):
      raise FileNotFoundError(missing_message()) from e
    raise


def tfds_num_examples(ds: tf.data.Dataset, builder, split: str,
                      fallback: int) -> int:
  """Examples in `ds` read from `split`: its cardinality, else the split's
  size in the builder's metadata, else `fallback`."""
  cardinality = int(ds.cardinality())
  if cardinality >= 0:
    return cardinality
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    return fallback


# ----------------------------------------------------------------------------
# Class folders.


def parse_folder_name(name: str) -> Tuple[str, Optional[str]]:
  """(train root, test root or None) of 'folder:/root[,/test_root]'."""
  paths = [p.strip() for p in name[len(FOLDER_PREFIX):].split(',')]
  if not paths[0] or len(paths) > 2 or (len(paths) == 2 and not paths[1]):
    raise ValueError(
        f'Bad folder dataset name {name!r}: use "folder:/train_root" or '
        '"folder:/train_root,/test_root".')
  return paths[0], (paths[1] if len(paths) == 2 else None)


def class_folder_names(path: str, kind: str, layout: str) -> list:
  """Sorted sub-folder (class) names of a `kind` folder ('Image', 'Audio').

  Raises FileNotFoundError if `path` is not a directory and ValueError if it
  has no sub-folders, both naming the expected `layout`.
  """
  if not files.isdir(path):
    raise FileNotFoundError(
        f'{kind} folder {path!r} does not exist (or is not a directory). '
        f'Expected layout: {layout}.')
  entries = files.listdir(path)
  classes = sorted(e.rstrip('/') for e in entries
                   if files.isdir(os.path.join(path, e)))
  if not classes:
    problem = 'is empty' if not entries else 'has no class sub-folders'
    raise ValueError(f'{kind} folder {path!r} {problem}. Expected layout: '
                     f'{layout}.')
  return classes


def folder_test_fraction(test_split, kind: str = 'image') -> float:
  """The held-out fraction of a single `kind` folder (default 20%)."""
  if test_split is None:
    return FOLDER_TEST_FRACTION
  try:
    fraction = float(test_split)
  except (TypeError, ValueError):
    fraction = -1.0
  if not 0 < fraction < 1:
    raise ValueError(f'For a single {kind} folder, test_split is the '
                     f'held-out fraction in (0, 1); got {test_split!r}.')
  return fraction


def held_out_split(num_items: int, fraction: float,
                   seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices), each sorted: a seeded random
  `round(fraction * num_items)` of `range(num_items)` is held out."""
  order = np.random.default_rng(seed).permutation(num_items)
  num_test = int(round(fraction * num_items))
  return np.sort(order[num_test:]), np.sort(order[:num_test])


# How batches reach `fit` (the `input_pipeline` of `image_datasets` and
# `audio_datasets`).
INPUT_PIPELINES = ('auto', 'tf.data', 'numpy')


def numpy_pipeline(input_pipeline: str, has_numpy: bool, name: str,
                   numpy_sets: str) -> bool:
  """Whether a pipeline's batches are NumPy (`array_batches`) rather than
  tf.data: `input_pipeline` 'numpy', or 'auto' on a backend other than
  TensorFlow where the source `has_numpy` (reads itself in NumPy).

  Raises:
    ValueError: an unknown `input_pipeline`, or 'numpy' for a source read by
      tf.data only (`numpy_sets`: which sets have it, for the message).
  """
  if input_pipeline not in INPUT_PIPELINES:
    raise ValueError(f'input_pipeline must be one of {INPUT_PIPELINES}, got '
                     f'{input_pipeline!r}.')
  if input_pipeline == 'numpy' and not has_numpy:
    raise ValueError(f"input_pipeline='numpy' is for {numpy_sets}; {name!r} "
                     'is read by tf.data.')
  if input_pipeline == 'auto':
    return has_numpy and keras.backend.backend() != 'tensorflow'
  return input_pipeline == 'numpy'


def indexed_examples(read: Callable[[int], np.ndarray], labels: np.ndarray,
                     shape: Sequence[Optional[int]]) -> tf.data.Dataset:
  """`(read(i), labels[i])` for every i, in order, as a `tf.data.Dataset`:
  the examples a source reads itself in NumPy, fed to a tf.data pipeline
  (`read` runs through `tf.numpy_function`).

  Args:
    read: `read(i)` -> float32 array of example i.
    labels: int [N].
    shape: the static shape of `read`'s output (None: varies).
  """
  labels = np.asarray(labels, np.int32)

  def example(index):
    value = tf.numpy_function(lambda i: read(int(i)), [index], tf.float32,
                              stateful=False)
    value.set_shape(shape)
    return value, tf.gather(labels, index)

  return tf.data.Dataset.range(len(labels)).map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
