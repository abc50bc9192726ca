"""Image folders: 'folder:/root' or 'folder:/train_root,/test_root'.

One sub-folder per class (`FOLDER_LAYOUT`); the files are listed, split
(a seeded hold-out of a single folder) and read in one seeded order, the
same at every pass, and decoded as Keras' `image_dataset_from_directory`
does (RGB, cropped to the aspect ratio, bilinear resize).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Tuple, Union

from absl import logging
import keras
import numpy as np
from diffstride.experiments.optional import tf

from diffstride.experiments.data import augmentation
from diffstride.experiments.data import sources
from diffstride.experiments.data.image_sources import Channels
from diffstride.experiments.data.image_sources import image_size_pair
from diffstride.experiments.data.image_sources import ImageExamples
from diffstride.experiments.data.image_sources import ImagePreprocessing
from diffstride.experiments.data.image_sources import ImageSize
from diffstride.experiments.data.image_sources import ImageSource
from diffstride.experiments.data.image_sources import small_image_preprocessing
from diffstride.experiments.data.sources import DatasetInfo

# Image file extensions read from class folders (those Keras decodes).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
FOLDER_IMAGE_SIZE = (32, 32)
FOLDER_STATS_EXAMPLES = 2048
FOLDER_LAYOUT = ('root/class_a/xxx.png, root/class_a/xxy.jpg, ..., '
                 'root/class_b/yyy.png, ... (one sub-folder per class, '
                 'images inside)')


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """Image files and their labels, in the order they are read."""
  paths: Tuple[str, ...]
  labels: Tuple[int, ...]

  def pick(self, indices) -> 'ImageFiles':
    return ImageFiles(tuple(self.paths[i] for i in indices),
                      tuple(self.labels[i] for i in indices))

  def limited(self, max_examples: Optional[int]) -> 'ImageFiles':
    return self if max_examples is None else self.pick(
        range(min(max_examples, len(self.paths))))


def image_class_folders(path: str) -> Tuple[list, ImageFiles]:
  """(sorted class folder names, their image files, sorted) of `path`;
  raises if the layout is wrong."""
  classes = sources.class_folder_names(path, 'Image', FOLDER_LAYOUT)
  paths, labels = [], []
  for label, name in enumerate(classes):
    for root, dirs, files in sorted(tf.io.gfile.walk(os.path.join(path,
                                                                  name))):
      dirs.sort()
      for file in sorted(files):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(root, file))
          labels.append(label)
  if not paths:
    raise ValueError(
        f'Image folder {path!r} has class sub-folders {classes} but no images '
        f'({", ".join(IMAGE_EXTENSIONS)}) in them. Expected layout: '
        f'{FOLDER_LAYOUT}.')
  return classes, ImageFiles(tuple(paths), tuple(labels))


def read_images(files: ImageFiles, size: Tuple[int, int]) -> tf.data.Dataset:
  """(float32 [H, W, 3] in [0, 255], int32 label) of each file, in order:
  decoded as Keras' `image_dataset_from_directory` does (RGB, cropped to
  the aspect ratio of `size`, bilinear resize)."""

  def read(path, label):
    image = tf.image.decode_image(tf.io.read_file(path), channels=3,
                                  expand_animations=False)
    image = keras.preprocessing.image.smart_resize(image, size,
                                                   interpolation='bilinear')
    image.set_shape(tuple(size) + (3,))
    return tf.cast(image, tf.float32), label

  ds = tf.data.Dataset.from_tensor_slices(
      (list(files.paths), np.asarray(files.labels, np.int32)))
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def folder_stats(ds: tf.data.Dataset) -> Tuple[Channels, Channels]:
  """Per-channel mean/std of up to FOLDER_STATS_EXAMPLES [0, 1] images."""
  total, total_sq, count = np.zeros(3), np.zeros(3), 0
  for images, _ in ds.take(FOLDER_STATS_EXAMPLES).batch(256):
    images = images.numpy().astype(np.float64) / 255.0
    total += images.sum(axis=(0, 1, 2))
    total_sq += (images**2).sum(axis=(0, 1, 2))
    count += images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
  std = np.where(std > 1e-6, std, 1.0)
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """What a folder dataset holds, checked, before any image is read.

  Attributes:
    train_dir: the train root.
    test_dir: the test root; None: a hold-out of the train root.
    classes: the sorted class folder names (the labels' order).
    image_shape: (H, W, 3), the size images are loaded at.
    train: the train files, in a seeded random order (a single folder:
      without the held-out ones).
    test: the test files, likewise.
  """
  train_dir: str
  test_dir: Optional[str]
  classes: list
  image_shape: Tuple[int, int, int]
  train: ImageFiles
  test: ImageFiles


@dataclasses.dataclass(frozen=True)
class ImageFolderSource(ImageSource):
  """'folder:/root' or 'folder:/train_root,/test_root': class folders of
  images, decoded as `keras.utils.image_dataset_from_directory` does (see
  `image_datasets` for the arguments). `describe()` counts image files;
  `load()` reads them. The files are read in one seeded order, the same at
  every pass (the train pipeline shuffles them per epoch)."""
  name: str
  seed: int = 0
  train_split: Optional[str] = None
  test_split: Union[float, str, None] = None
  image_size: ImageSize = None
  augment: bool = True
  pad_crop: int = 4
  flip: bool = True
  normalize: bool = True
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  @property
  def test_fraction(self) -> float:
    """The held-out fraction of a single folder."""
    return sources.folder_test_fraction(self.test_split)

  @functools.cached_property
  def layout(self) -> FolderLayout:
    """The folders' layout, listed once: `describe()` and `load()` share it."""
    if self.train_split:
      raise ValueError('Folder datasets have no named splits: the train set '
                       'is the (first) folder; test_split is the held-out '
                       'fraction of a single folder.')
    train_dir, test_dir = sources.parse_folder_name(self.name)
    classes, train = image_class_folders(train_dir)
    size = image_size_pair(self.image_size) or FOLDER_IMAGE_SIZE
    if test_dir is None:
      train_idx, test_idx = sources.held_out_split(
          len(train.paths), self.test_fraction, self.seed)
      train, test = train.pick(train_idx), train.pick(test_idx)
    else:
      if self.test_split is not None:
        raise ValueError('test_split is not used with a separate test folder.')
      test_classes, test = image_class_folders(test_dir)
      if test_classes != classes:
        raise ValueError(
            f'The test folder {test_dir!r} has class folders {test_classes}, '
            f'the train folder {train_dir!r} has {classes}: they must match.')
    rng = np.random.default_rng(self.seed)
    shuffled = lambda files: files.pick(rng.permutation(len(files.paths)))
    return FolderLayout(
        train_dir, test_dir, classes, tuple(size) + (3,),
        shuffled(train).limited(self.max_train_examples),
        shuffled(test).limited(self.max_test_examples))

  def describe(self) -> DatasetInfo:
    layout = self.layout
    if self.augment:
      augmentation.check_pad_crop(self.pad_crop, layout.image_shape)
    return DatasetInfo(self.name, len(layout.classes), layout.image_shape,
                       len(layout.train.paths), len(layout.test.paths))

  def load(self) -> ImageExamples:
    info = self.describe()
    layout = self.layout
    train = read_images(layout.train, layout.image_shape[:2])
    test = read_images(layout.test, layout.image_shape[:2])
    mean, std = folder_stats(train) if self.normalize else (None, None)
    logging.info('Folder dataset %s: %d classes %s, %d train / %d test '
                 'images.', self.name, len(layout.classes), layout.classes,
                 info.num_train_examples, info.num_test_examples)
    return ImageExamples(train, test, info, mean, std)

  def preprocessing(self) -> ImagePreprocessing:
    # Keras loads the images at their size already.
    return small_image_preprocessing(255.0, None, self.augment, self.pad_crop,
                                     self.flip)
