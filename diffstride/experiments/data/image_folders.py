"""Image folders: 'folder:/root' or 'folder:/train_root,/test_root'.

One sub-folder per class (`FOLDER_LAYOUT`); the files are listed, split
(a seeded hold-out of a single folder) and read in one seeded order, the
same at every pass, and decoded as Keras' `image_dataset_from_directory`
does (RGB, cropped to the aspect ratio, bilinear resize), in NumPy with
Pillow (`read_image_file`): the NumPy pipeline reads them a batch at a time
(`FolderImages`), tf.data through `tf.numpy_function`. No TensorFlow needed.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from typing import Optional, Tuple, Union

from absl import logging
import numpy as np
import PIL.Image
from diffstride.experiments.optional import tf

from diffstride.experiments import files
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import augmentation
from diffstride.experiments.data import sources
from diffstride.experiments.data.image_sources import Channels
from diffstride.experiments.data.image_sources import ImageArrays
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
    for root, dirs, names in sorted(files.walk(os.path.join(path, name))):
      dirs.sort()
      for file in sorted(names):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(root, file))
          labels.append(label)
  if not paths:
    raise ValueError(
        f'Image folder {path!r} has class sub-folders {classes} but no images '
        f'({", ".join(IMAGE_EXTENSIONS)}) in them. Expected layout: '
        f'{FOLDER_LAYOUT}.')
  return classes, ImageFiles(tuple(paths), tuple(labels))


def resize_bilinear(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """[h, w, C] -> [H, W, C] float32: bilinear interpolation with half-pixel
  centres and no antialiasing (TensorFlow's `tf.image.resize(..., 'bilinear')`
  and Keras' default)."""
  image = np.asarray(image, np.float32)

  def axis_weights(in_size, out_size):
    position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    below = np.floor(position)
    fraction = (position - below).astype(np.float32)
    low = np.clip(below, 0, in_size - 1).astype(int)
    high = np.clip(below + 1, 0, in_size - 1).astype(int)
    return low, high, fraction

  if image.shape[:2] == tuple(size):
    return image
  low, high, frac = axis_weights(image.shape[0], size[0])
  rows = (image[low] * (1 - frac)[:, None, None] +
          image[high] * frac[:, None, None])
  low, high, frac = axis_weights(image.shape[1], size[1])
  return (rows[:, low] * (1 - frac)[None, :, None] +
          rows[:, high] * frac[None, :, None])


def smart_resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """[h, w, C] -> [H, W, C] float32 as `keras.preprocessing.image.
  smart_resize` does: the largest central crop of the target's aspect ratio,
  then a bilinear resize (`resize_bilinear`)."""
  height, width = image.shape[:2]
  crop_height = max(min(height, int(float(width * size[0]) / size[1])), 1)
  crop_width = max(min(width, int(float(height * size[1]) / size[0])), 1)
  top = int(float(height - crop_height) / 2)
  left = int(float(width - crop_width) / 2)
  return resize_bilinear(
      image[top:top + crop_height, left:left + crop_width], size)


def read_image_file(path: str, size: Tuple[int, int]) -> np.ndarray:
  """float32 [H, W, 3] in [0, 255] of an image file: decoded by Pillow (RGB;
  an animation's first frame), then `smart_resize`d, as Keras'
  `image_dataset_from_directory` does. PNG, BMP and GIF decode to the same
  pixels as TensorFlow; JPEG with the accurate integer DCT (TensorFlow's
  `decode_jpeg(dct_method='INTEGER_ACCURATE')`; its default fast DCT
  differs by a few grey levels).

  Raises:
    ValueError: the file is not an image Pillow can read.
  """
  with files.open_file(path, 'rb') as f:
    data = f.read()
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      pixels = np.asarray(image.convert('RGB'), np.float32)
  except (PIL.UnidentifiedImageError, OSError) as e:
    raise ValueError(f'{path} is not an image that can be read ({e}).') from e
  return smart_resize(pixels, size)


@dataclasses.dataclass(frozen=True)
class FolderImages(array_batches.ExampleReader):
  """The images of `image_files` at `size`, read a batch at a time, in
  [0, 1]:
  float32 [B, H, W, 3] (the NumPy pipeline's inputs)."""
  image_files: ImageFiles
  size: Tuple[int, int]

  def __len__(self) -> int:
    return len(self.image_files.paths)

  def image(self, index: int) -> np.ndarray:
    """Image `index`, float32 [H, W, 3] in [0, 255]."""
    return read_image_file(self.image_files.paths[int(index)], self.size)

  def read(self, indices, rng=None) -> np.ndarray:
    del rng  # Reading is not random.
    size = tuple(self.size) + (3,)
    images = [self.image(i) for i in indices]
    return (np.stack(images) if images else np.zeros((0,) + size, np.float32)
            ) / np.float32(255.0)

  def dataset(self) -> tf.data.Dataset:
    """(float32 [H, W, 3] in [0, 255], int32 label) of each file, in order,
    as a `tf.data.Dataset` (read through `tf.numpy_function`)."""
    return sources.indexed_examples(self.image, self.image_files.labels,
                                    tuple(self.size) + (3,))


def folder_stats(images: FolderImages) -> Tuple[Channels, Channels]:
  """Per-channel mean/std of the first FOLDER_STATS_EXAMPLES images, in
  [0, 1] units."""
  total, total_sq, count = np.zeros(3), np.zeros(3), 0
  num = min(len(images), FOLDER_STATS_EXAMPLES)
  for start in range(0, num, 256):
    batch = images.read(range(start, min(start + 256, num))).astype(
        np.float64)
    total += batch.sum(axis=(0, 1, 2))
    total_sq += (batch**2).sum(axis=(0, 1, 2))
    count += batch.shape[0] * batch.shape[1] * batch.shape[2]
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
  has_arrays = True

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

  def arrays(self) -> ImageArrays:
    """The train and test images as `FolderImages` (read a batch at a time),
    with the train set's statistics (of its first FOLDER_STATS_EXAMPLES
    images)."""
    info = self.describe()
    layout = self.layout
    size = layout.image_shape[:2]
    train = FolderImages(layout.train, size)
    test = FolderImages(layout.test, size)
    mean, std = folder_stats(train) if self.normalize else ((0.0,) * 3,
                                                             (1.0,) * 3)
    logging.info('Folder dataset %s: %d classes %s, %d train / %d test '
                 'images.', self.name, len(layout.classes), layout.classes,
                 info.num_train_examples, info.num_test_examples)
    return ImageArrays(train, np.asarray(layout.train.labels, np.int64), test,
                       np.asarray(layout.test.labels, np.int64), info, mean,
                       std)

  def load(self) -> ImageExamples:
    arrays = self.arrays()
    mean, std = (arrays.mean, arrays.std) if self.normalize else (None, None)
    return ImageExamples(arrays.x_train.dataset(), arrays.x_test.dataset(),
                         arrays.info, mean, std)

  def preprocessing(self) -> ImagePreprocessing:
    # Keras loads the images at their size already.
    return small_image_preprocessing(255.0, None, self.augment, self.pad_crop,
                                     self.flip)
