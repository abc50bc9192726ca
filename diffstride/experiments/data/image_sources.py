"""Image sources: what every image source provides, TFDS and in-memory sets.

  * `ImageSource`: `describe()` (a `DatasetInfo`, no data read), `load()`
    (unbatched `(raw image, int label)` train and test sets and the train
    set's per-channel statistics, `ImageExamples`) and `preprocessing()`
    (`ImagePreprocessing`: how raw images become model inputs).
  * `TfdsImageSource`: CIFAR-10/100 and ImageNet through tensorflow-datasets
    (`TFDS_DATASETS`: their classes, splits and statistics).
  * `ArrayImageSource`: data sets made in memory as NumPy arrays
    (synthetic_frequency, digits, textures).

Image folders are in `image_folders`; `images.image_source` picks the source
of a dataset name and `images.image_datasets` builds the pipelines.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
from diffstride.experiments.optional import tf
from diffstride.experiments.optional import tfds

from diffstride.experiments.data import augmentation
from diffstride.experiments.data import sources
from diffstride.experiments.data.sources import DatasetInfo

ImageSize = Union[int, Sequence[int], None]
Channels = Tuple[float, ...]

IMAGENET_MANUAL_STEPS = (
    'ImageNet cannot be downloaded automatically (TFDS manual download): get '
    'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
    'https://image-net.org, put them')


@dataclasses.dataclass(frozen=True)
class TfdsImageDataset:
  """A TFDS image dataset: its classes, splits and statistics."""
  num_classes: int
  image_shape: tuple  # (H, W, C) as stored (ImageNet: the default crop).
  train_split: str
  test_split: str
  num_train: int  # Full split sizes.
  num_test: int
  mean: Channels  # Per channel, images in [0, 1].
  std: Channels


TFDS_DATASETS = {
    'cifar10': TfdsImageDataset(
        10, (32, 32, 3), 'train', 'test', 50_000, 10_000,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': TfdsImageDataset(
        100, (32, 32, 3), 'train', 'test', 50_000, 10_000,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': TfdsImageDataset(
        1000, (224, 224, 3), 'train', 'validation', 1_281_167, 50_000,
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def image_size_pair(image_size: ImageSize) -> Optional[Tuple[int, int]]:
  """(height, width) of an int or a pair; None stays None."""
  if image_size is None:
    return None
  if isinstance(image_size, (int, np.integer)):
    return (int(image_size), int(image_size))
  size = tuple(int(s) for s in image_size)
  if len(size) != 2:
    raise ValueError(f'image_size must be an int or (height, width), got '
                     f'{image_size!r}.')
  return size


# ----------------------------------------------------------------------------
# Image sources: unbatched (raw image, int label) + their preprocessing.


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
  """How a source's raw images become model inputs (before normalisation).

  Attributes:
    train_image: (raw image, seed int64 [2]) -> float32 [H, W, C], in [0, 1]
      for stored images.
    eval_image: raw image -> float32 [H, W, C].
    augment_batch: (images [B, H, W, C], seed int64 [2]) -> [B, H, W, C],
      augmentation of whole normalised train batches; None for none.
  """
  train_image: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
  eval_image: Callable[[tf.Tensor], tf.Tensor]
  augment_batch: Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = None


def small_image_preprocessing(scale: float, size: Optional[Tuple[int, int]],
                              augment: bool, pad_crop: int,
                              flip: bool) -> ImagePreprocessing:
  """Small images (CIFAR, synthetic, folders): scaled by 1 / `scale`,
  resized to `size` (None: kept); augmentation (pad-and-crop, flip) runs per
  batch, where it commutes with the per-channel normalisation before it."""

  def eval_image(image):
    return augmentation.resize_image(
        augmentation.to_unit_range(image, scale), size)

  def train_image(image, seed):
    del seed
    return eval_image(image)

  def augment_batch(images, seed):
    return augmentation.batch_pad_crop_flip(images, seed, pad_crop=pad_crop,
                                            flip=flip)

  return ImagePreprocessing(train_image, eval_image,
                            augment_batch if augment else None)


def imagenet_preprocessing(side: int, augment: bool,
                           flip: bool) -> ImagePreprocessing:
  """ImageNet JPEG bytes to [side, side, 3]: random-resized crops (+ flips)
  for training when `augment`, else the central crop."""

  def train_image(jpeg, seed):
    if augment:
      return augmentation.imagenet_train_image(jpeg, seed, side, flip=flip)
    return augmentation.imagenet_eval_image(jpeg, side)

  return ImagePreprocessing(
      train_image, lambda jpeg: augmentation.imagenet_eval_image(jpeg, side))


@dataclasses.dataclass(frozen=True)
class ImageExamples(sources.Examples):
  """An image source's examples, with the statistics of its normalisation.

  Attributes:
    mean: per-channel mean of the [0, 1] train images (C values); None when
      not computed (folders with normalize=False).
    std: per-channel standard deviation, likewise.
  """
  mean: Optional[Channels]
  std: Optional[Channels]


class ImageSource(sources.Source):
  """An image dataset: `describe()`, `load()` and `preprocessing()`."""

  # Whether the decoded examples may be cached in memory (`cache=True`).
  cacheable: bool = True
  # Whether it reads its examples itself, in NumPy (`arrays()`): the NumPy
  # pipeline (`array_batches`) can take them, without TensorFlow.
  has_arrays: bool = False

  @abc.abstractmethod
  def load(self) -> ImageExamples:
    """The unbatched train and test sets, their info and statistics."""

  @abc.abstractmethod
  def preprocessing(self) -> ImagePreprocessing:
    """How `load()`'s raw images become model inputs."""


@dataclasses.dataclass(frozen=True)
class TfdsImageSource(ImageSource):
  """'cifar10', 'cifar100' or 'imagenet2012' from TFDS (see `image_datasets`
  for the arguments). `describe()` counts are the full split sizes (cut to
  the max_*_examples); `load()`'s are those of the splits actually read."""
  name: str
  data_dir: Optional[str] = None
  download: bool = False
  seed: int = 0
  train_split: Optional[str] = None
  test_split: Optional[str] = None
  image_size: ImageSize = None
  augment: bool = True
  pad_crop: int = 4
  flip: bool = True
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  @property
  def dataset(self) -> TfdsImageDataset:
    return TFDS_DATASETS[self.name]

  @property
  def imagenet(self) -> bool:
    return self.name == 'imagenet2012'

  @property
  def cacheable(self) -> bool:  # ImageNet is never cached.
    return not self.imagenet

  def describe(self) -> DatasetInfo:
    size = image_size_pair(self.image_size)
    if self.imagenet:
      if size is not None and size[0] != size[1]:
        raise ValueError(
            f'imagenet2012 crops are square; got {self.image_size!r}.')
      side = size[0] if size else augmentation.IMAGENET_IMAGE_SIZE
      image_shape = (side, side, 3)
    else:
      image_shape = (tuple(size) + (3,) if size
                     else self.dataset.image_shape)
      if self.augment:
        augmentation.check_pad_crop(self.pad_crop, image_shape)
    return DatasetInfo(
        name=self.name, num_classes=self.dataset.num_classes,
        image_shape=image_shape,
        num_train_examples=sources.limit_count(self.dataset.num_train,
                                               self.max_train_examples),
        num_test_examples=sources.limit_count(self.dataset.num_test,
                                              self.max_test_examples))

  def _missing_message(self, builder, data_dir: Optional[str]) -> str:
    return sources.missing_tfds_message(
        f"Dataset '{self.name}'", self.name, builder, data_dir,
        'image_datasets',
        manual_steps=IMAGENET_MANUAL_STEPS if self.imagenet else None)

  def load(self) -> ImageExamples:
    info = self.describe()
    data_dir = sources.resolve_data_dir(self.data_dir)
    builder = tfds.builder(self.name, data_dir=data_dir)
    missing = functools.partial(self._missing_message, builder, data_dir)
    if self.download:
      sources.prepare_tfds(builder, self.name, missing)
    train_split = self.train_split or self.dataset.train_split
    test_split = self.test_split or self.dataset.test_split
    decoders = ({'image': tfds.decode.SkipDecoding()} if self.imagenet
                else None)
    train = sources.read_tfds_split(
        builder, train_split, missing, as_supervised=True, decoders=decoders,
        # Shuffled shards unless a fixed subset is asked for.
        shuffle_files=self.max_train_examples is None,
        read_config=tfds.ReadConfig(shuffle_seed=self.seed,
                                    shuffle_reshuffle_each_iteration=False,
                                    try_autocache=False))
    test = sources.read_tfds_split(
        builder, test_split, missing, as_supervised=True, decoders=decoders,
        shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False))
    train = sources.take_examples(train, self.max_train_examples)
    test = sources.take_examples(test, self.max_test_examples)
    info = info.with_counts(
        sources.tfds_num_examples(train, builder, train_split,
                                  self.dataset.num_train),
        sources.tfds_num_examples(test, builder, test_split,
                                  self.dataset.num_test))
    return ImageExamples(train, test, info, self.dataset.mean,
                         self.dataset.std)

  def preprocessing(self) -> ImagePreprocessing:
    if self.imagenet:
      return imagenet_preprocessing(self.describe().image_shape[0],
                                    self.augment, self.flip)
    return small_image_preprocessing(255.0, image_size_pair(self.image_size),
                                     self.augment, self.pad_crop, self.flip)


@dataclasses.dataclass(frozen=True)
class ImageArrays:
  """A set's examples in NumPy: float32 images [n, H, W, C] in [0, 1] (or
  `array_batches.ExampleReader`s that read them a batch at a time: image
  folders) for train and test, int labels [n], its `DatasetInfo` and the
  train set's per-channel mean and standard deviation."""
  x_train: Any
  y_train: np.ndarray
  x_test: Any
  y_test: np.ndarray
  info: DatasetInfo
  mean: Tuple[float, ...]
  std: Tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ArrayImageSource(ImageSource):
  """A data set made in memory as NumPy arrays: 'synthetic_frequency'
  (generated), 'digits' and 'textures' (from installed packages,
  `packaged`). `settings` describes it (`name`, `num_classes`,
  `image_shape`, `num_train`, `num_test`) and makes it (`arrays()`:
  `(x_train, y_train, x_test, y_test)`, float32 [n, H, W, C] and int64 [n]);
  the first max_*_examples of each split are used. In memory: not cached."""
  settings: object
  augment: bool = True
  pad_crop: int = 4
  flip: bool = True
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None
  cacheable = False
  has_arrays = True

  def describe(self) -> DatasetInfo:
    image_shape = tuple(self.settings.image_shape)
    if self.augment:
      augmentation.check_pad_crop(self.pad_crop, image_shape)
    return DatasetInfo(
        self.settings.name, int(self.settings.num_classes), image_shape,
        sources.limit_count(self.settings.num_train, self.max_train_examples),
        sources.limit_count(self.settings.num_test, self.max_test_examples))

  def arrays(self) -> ImageArrays:
    """The examples as NumPy arrays, with the train set's statistics."""
    info = self.describe()
    x_train, y_train, x_test, y_test = self.settings.arrays()
    x_train, y_train = (x_train[:info.num_train_examples],
                        y_train[:info.num_train_examples])
    x_test, y_test = (x_test[:info.num_test_examples],
                      y_test[:info.num_test_examples])
    channels = info.image_shape[-1]
    mean = (x_train.mean(axis=(0, 1, 2)) if len(x_train)
            else np.zeros(channels))
    std = x_train.std(axis=(0, 1, 2)) if len(x_train) else np.ones(channels)
    return ImageArrays(x_train, y_train, x_test, y_test, info,
                       tuple(float(m) for m in mean),
                       tuple(float(s) for s in std))

  def load(self) -> ImageExamples:
    arrays = self.arrays()
    return ImageExamples(
        tf.data.Dataset.from_tensor_slices((arrays.x_train, arrays.y_train)),
        tf.data.Dataset.from_tensor_slices((arrays.x_test, arrays.y_test)),
        arrays.info, arrays.mean, arrays.std)

  def preprocessing(self) -> ImagePreprocessing:
    return small_image_preprocessing(1.0, None, self.augment, self.pad_crop,
                                     self.flip)
