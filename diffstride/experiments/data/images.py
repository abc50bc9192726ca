"""Image classification datasets of the DiffStride experiments.

`image_datasets(name, ...)` returns `(train, test, info)`: two batched
`tf.data.Dataset`s of `(images, labels)` with float32 images `[B, H, W, C]`
and float32 one-hot labels `[B, K]`, and a `DatasetInfo`. Datasets, each an
`ImageSource` (`image_source`):

  * 'cifar10', 'cifar100', 'imagenet2012' (`TfdsImageSource`): TensorFlow
    Datasets (TFDS), read from `data_dir` (else env `TFDS_DATA_DIR`, else
    TFDS's default `~/tensorflow_datasets`). With `download=False` (the
    default) nothing is ever downloaded: a dataset that is not prepared there
    raises `FileNotFoundError` saying how to get it.
  * 'synthetic_frequency' (`ArrayImageSource`): a built-in set generated
    in memory in a few seconds, whose classes differ only in spatial
    frequency (see `synthetic.synthetic_frequency_arrays`). Needs no files
    and no network.
  * 'digits', 'textures' (`ArrayImageSource`): real grey images that
    installed packages ship, made in memory (see `packaged`): scikit-learn's
    digits upsampled to 32x32, and texture patches of scikit-image's bundled
    photographs, train and test patches from disjoint rows. No network.
  * 'folder:/path/to/root' (`ImageFolderSource`): a folder of class folders
    (`root/class_a/xxx.png`, `root/class_b/yyy.jpg`, ...); the test set is a
    seeded 20% hold-out of it (`test_split=0.1` changes the fraction), or
    'folder:/train_root,/test_root' gives a separate test folder with the same
    class folders.

`dataset_info(...)` is `image_datasets`' `DatasetInfo` without reading or
generating data (the source's `describe()`, for `train(dry_run=True)`).

Train pipeline, in order: (cache) -> seeded shuffle, reshuffled every epoch ->
preprocessing -> per-channel normalisation -> one-hot labels -> batch (the
final partial batch is dropped when there is at least one full batch) ->
batch augmentation -> mixup -> prefetch. Not repeated: one pass is one epoch.
  * Augmentation (`augment=True`), small images (CIFAR, synthetic, folders):
    reflect-pad `pad_crop` pixels on each side (mirror padding, not zeros:
    black borders would add artificial high frequencies, which matters for
    spectral pooling), random crop back to H x W, random horizontal flip when
    `flip`, on whole batches (`augmentation.batch_pad_crop_flip`). ImageNet:
    Inception-style random-resized crop (area 8%-100%, aspect ratio
    3/4-4/3) resized to `image_size` (224), random flip when `flip`;
    `pad_crop` is not used.
  * The random numbers come from stateless ops fed by seeded streams. The
    returned `train` redraws them (and its order) at every iteration; the
    training loop instead feeds epoch e the fixed pass
    `info.train_epochs.of_epoch(e)`, a pure function of (seed, e), so that
    a resumed run sees the very batches of an uninterrupted one (see
    `batching.py`).
  * Mixup (`mixup_alpha > 0`, train set only): every example of a batch is
    mixed with a random other example of the same batch with its own weight
    lam ~ Beta(alpha, alpha), images and one-hot labels alike
    (`augmentation.mixup`).

Test pipeline: no augmentation, no mixup, same normalisation, deterministic
order, batches of `eval_batch_size or batch_size`, final partial batch kept.
ImageNet test images: central crop of 87.5% of the shorter side, resized to
`image_size` (= resize the shorter side to 256 and center-crop 224).

Normalisation (`normalize=True`): images are first scaled to [0, 1], then
`(x - mean) / std` per channel, with the usual train-set statistics for
CIFAR-10/100 and ImageNet, the statistics of the train set for
'synthetic_frequency', 'digits' and 'textures', and for folders the statistics of (up to 2048 images
of) the train folder. `normalize=False` returns the [0, 1] images.

Sizes and lengths: `info.num_train_examples` / `info.num_test_examples` count
examples (after `max_*_examples`); the datasets' cardinality is known, so
`len(train)` is the number of train steps per epoch.
"""

import abc
import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence, Tuple, Union

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride.experiments.data import augmentation
from diffstride.experiments.data import batching
from diffstride.experiments.data import packaged
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data.sources import DatasetInfo

ImageSize = Union[int, Sequence[int], None]
Channels = Tuple[float, ...]

FOLDER_PREFIX = sources.FOLDER_PREFIX
SYNTHETIC_NAME = synthetic.SYNTHETIC_FREQUENCY_NAME
# The data sets made in memory: (settings function, gin-bindable, called
# with settings_only=True; the name of its argument that `image_size` sets).
ARRAY_DATASETS = {
    SYNTHETIC_NAME: (synthetic.synthetic_frequency_arrays, 'image_size'),
    packaged.DIGITS_NAME: (packaged.digits_arrays, 'image_size'),
    packaged.TEXTURES_NAME: (packaged.textures_arrays, 'patch_size'),
}
KNOWN_DATASETS = ('cifar10', 'cifar100', 'imagenet2012', *ARRAY_DATASETS,
                  FOLDER_PREFIX + '/path/to/class_folders')
# Image file extensions read from class folders (those Keras decodes).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
FOLDER_IMAGE_SIZE = (32, 32)
FOLDER_STATS_EXAMPLES = 2048
FOLDER_LAYOUT = ('root/class_a/xxx.png, root/class_a/xxy.jpg, ..., '
                 'root/class_b/yyy.png, ... (one sub-folder per class, '
                 'images inside)')
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

  def describe(self) -> DatasetInfo:
    image_shape = tuple(self.settings.image_shape)
    if self.augment:
      augmentation.check_pad_crop(self.pad_crop, image_shape)
    return DatasetInfo(
        self.settings.name, int(self.settings.num_classes), image_shape,
        sources.limit_count(self.settings.num_train, self.max_train_examples),
        sources.limit_count(self.settings.num_test, self.max_test_examples))

  def load(self) -> ImageExamples:
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
    return ImageExamples(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_test, y_test)), info,
        tuple(float(m) for m in mean), tuple(float(s) for s in std))

  def preprocessing(self) -> ImagePreprocessing:
    return small_image_preprocessing(1.0, None, self.augment, self.pad_crop,
                                     self.flip)


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


def _image_class_folders(path: str) -> Tuple[list, ImageFiles]:
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


def _read_images(files: ImageFiles, size: Tuple[int, int]) -> tf.data.Dataset:
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


def _folder_stats(ds: tf.data.Dataset) -> Tuple[Channels, Channels]:
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
    classes, train = _image_class_folders(train_dir)
    size = image_size_pair(self.image_size) or FOLDER_IMAGE_SIZE
    if test_dir is None:
      train_idx, test_idx = sources.held_out_split(
          len(train.paths), self.test_fraction, self.seed)
      train, test = train.pick(train_idx), train.pick(test_idx)
    else:
      if self.test_split is not None:
        raise ValueError('test_split is not used with a separate test folder.')
      test_classes, test = _image_class_folders(test_dir)
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
    train = _read_images(layout.train, layout.image_shape[:2])
    test = _read_images(layout.test, layout.image_shape[:2])
    mean, std = _folder_stats(train) if self.normalize else (None, None)
    logging.info('Folder dataset %s: %d classes %s, %d train / %d test '
                 'images.', self.name, len(layout.classes), layout.classes,
                 info.num_train_examples, info.num_test_examples)
    return ImageExamples(train, test, info, mean, std)

  def preprocessing(self) -> ImagePreprocessing:
    # Keras loads the images at their size already.
    return small_image_preprocessing(255.0, None, self.augment, self.pad_crop,
                                     self.flip)


def check_image_dataset_name(name) -> str:
  """The key of an image dataset name (see `sources.check_dataset_name`)."""
  return sources.check_dataset_name(
      name, list(TFDS_DATASETS) + list(ARRAY_DATASETS), KNOWN_DATASETS)


def image_source(name: str, *, data_dir=None, download: bool = False,
                 seed: int = 0, train_split=None, test_split=None,
                 image_size: ImageSize = None, augment: bool = True,
                 pad_crop: int = 4, flip: bool = True, normalize: bool = True,
                 max_train_examples=None,
                 max_test_examples=None) -> ImageSource:
  """The `ImageSource` of a dataset name (see `image_datasets`' arguments).

  The in-memory sets ('synthetic_frequency', 'digits', 'textures') take
  their sizes, classes and seed from their settings function
  (`synthetic_frequency_arrays`, `digits_arrays`, `textures_arrays`: their
  gin bindings), `image_size` and the max_*_examples on top.
  """
  key = check_image_dataset_name(name)
  augmentation_args = dict(augment=augment, pad_crop=pad_crop, flip=flip)
  if key.startswith(FOLDER_PREFIX):
    return ImageFolderSource(
        key, seed=seed, train_split=train_split, test_split=test_split,
        image_size=image_size, normalize=normalize,
        max_train_examples=max_train_examples,
        max_test_examples=max_test_examples, **augmentation_args)
  if key in ARRAY_DATASETS:
    # The data set is fixed (its settings' seed): `seed` only drives the
    # pipeline.
    if train_split or test_split:
      raise ValueError(f'{key} has no named splits; use max_train_examples / '
                       'max_test_examples or bind its settings (e.g. '
                       'synthetic_frequency_arrays.num_train).')
    size = image_size_pair(image_size)
    if size is not None and size[0] != size[1]:
      raise ValueError(f'{key} images are square; got {image_size!r}.')
    settings_fn, size_argument = ARRAY_DATASETS[key]
    overrides = {} if size is None else {size_argument: size[0]}
    settings = settings_fn(settings_only=True, **overrides)
    if key == SYNTHETIC_NAME:  # Generates only the examples used.
      settings = dataclasses.replace(
          settings,
          num_train=sources.limit_count(settings.num_train,
                                        max_train_examples),
          num_test=sources.limit_count(settings.num_test, max_test_examples))
    return ArrayImageSource(settings, max_train_examples=max_train_examples,
                            max_test_examples=max_test_examples,
                            **augmentation_args)
  return TfdsImageSource(
      key, data_dir=data_dir, download=download, seed=seed,
      train_split=train_split, test_split=test_split, image_size=image_size,
      max_train_examples=max_train_examples,
      max_test_examples=max_test_examples, **augmentation_args)


# ----------------------------------------------------------------------------
# The public entry points.


# `seed` is given by the training loop (train.seed / --seed) and
# `describe_only` by `dataset_info`: not bindable.
@gin.configurable(module='diffstride', denylist=['seed', 'describe_only'])
def image_datasets(
    name: str = 'cifar10',
    *,
    data_dir=None,
    batch_size: int = 128,
    eval_batch_size=None,
    augment: bool = True,
    pad_crop: int = 4,
    flip: bool = True,
    mixup_alpha: float = 0.0,
    normalize: bool = True,
    image_size=None,
    download: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    train_split=None,
    test_split=None,
    cache: bool = True,
    max_train_examples=None,
    max_test_examples=None,
    describe_only: bool = False,
):
  """(train, test, info): batched datasets of (float32 images [B,H,W,C], float32 one-hot labels [B,K]).

  See the module docstring for the pipelines.

  Args:
    name: 'cifar10', 'cifar100', 'imagenet2012', 'synthetic_frequency',
      'digits', 'textures', 'folder:/root' or
      'folder:/train_root,/test_root'.
    data_dir: TFDS data directory (default: env TFDS_DATA_DIR, then TFDS's
      default). Only for the TFDS datasets.
    batch_size: train batch size.
    eval_batch_size: test batch size (default: batch_size).
    augment: augment the train set (pad/crop/flip; ImageNet: random-resized
      crop/flip). With False, train images are preprocessed like test images.
    pad_crop: reflection padding (pixels per side) before the random crop.
    flip: random horizontal flips (when augment).
    mixup_alpha: mixup on train batches with Beta(alpha, alpha); 0: off.
    normalize: per-channel standardisation; False gives [0, 1] images.
    image_size: int or (H, W). ImageNet: the crop size (default 224);
      folders: the size images are loaded at (default 32x32, cropped to the
      aspect ratio); synthetic_frequency, digits, textures: made at that
      size (textures: the patch size); CIFAR:
      resized to it (default: unchanged 32x32).
    download: let TFDS download and prepare the dataset if missing
      (ImageNet: prepare from the manually downloaded tars).
    shuffle_buffer: train shuffle buffer (examples).
    seed: seeds shuffling, augmentation, mixup and the folder hold-out.
    train_split / test_split: TFDS split names (e.g. 'train[:90%]'),
      defaults train / test (ImageNet: validation). Single folder:
      test_split is the held-out fraction (default 0.2).
    cache: cache the decoded train/test examples in memory (CIFAR and
      folders; ImageNet is never cached; synthetic data is in memory anyway).
    max_train_examples / max_test_examples: use only that many examples.
    describe_only: return only the `DatasetInfo` (the source's `describe()`),
      without reading or generating any data; what `dataset_info` returns.

  Returns:
    (train, test, info); info alone with describe_only.

  Raises:
    ValueError: unknown dataset name, bad arguments, or a folder without
      class folders / images.
    FileNotFoundError: a TFDS dataset is not prepared in data_dir (and
      download=False), or a folder does not exist.
  """
  check_image_dataset_name(name)
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  eval_batch_size = int(eval_batch_size or batch_size)
  if mixup_alpha < 0:
    raise ValueError(f'mixup_alpha must be >= 0, got {mixup_alpha}.')
  source = image_source(
      name, data_dir=data_dir, download=download, seed=seed,
      train_split=train_split, test_split=test_split, image_size=image_size,
      augment=augment, pad_crop=pad_crop, flip=flip, normalize=normalize,
      max_train_examples=max_train_examples,
      max_test_examples=max_test_examples)
  if describe_only:
    return source.describe()
  examples = source.load()
  preprocessing = source.preprocessing()
  info = examples.info
  num_classes = info.num_classes
  if normalize:
    mean = tf.constant(examples.mean, tf.float32)
    std = tf.constant(examples.std, tf.float32)
    norm = lambda image: (image - mean) / std
  else:
    norm = lambda image: image

  def train_map(example, random):
    image, label = example
    seed_ = tf.stack([random, tf.constant(seed, tf.int64)])
    image = norm(preprocessing.train_image(image, seed_))
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)

  def test_map(image, label):
    image = norm(preprocessing.eval_image(image))
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)

  train_examples, test = examples.train, examples.test
  if cache and source.cacheable:
    train_examples, test = train_examples.cache(), test.cache()

  def train_batches(pass_seed, reshuffle: bool) -> tf.data.Dataset:
    """The batched train set: tf.data's reshuffled draws (`reshuffle`) or
    the fixed pass of `pass_seed` (see batching.py)."""
    def randoms(use):
      return batching.random_stream(
          seed + use if reshuffle else batching.substream(pass_seed, use),
          reshuffle)

    batches = batching.shuffled_batches(
        train_examples, train_map, batch_size, pass_seed, shuffle_buffer,
        info.num_train_examples, reshuffle=reshuffle)
    if preprocessing.augment_batch is not None:

      def augment_batch(batch, random):
        images, labels = batch
        return preprocessing.augment_batch(
            images, tf.stack([random, tf.constant(seed, tf.int64)])), labels

      batches = tf.data.Dataset.zip(
          (batches, randoms(batching.BATCH_AUGMENT))).map(
              augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if mixup_alpha > 0:

      def mix(batch, random):
        images, labels = batch
        return augmentation.mixup(
            images, labels, mixup_alpha,
            tf.stack([random, tf.constant(seed, tf.int64)]))

      batches = tf.data.Dataset.zip((batches, randoms(batching.MIXUP))).map(
          mix, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)

  train = train_batches(seed, reshuffle=True)
  info = info.with_train_epochs(
      train, lambda epoch: train_batches(batching.epoch_seed(seed, epoch),
                                         reshuffle=False))
  test = test.map(test_map, num_parallel_calls=tf.data.AUTOTUNE)
  test = test.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
  return train, test, info


def dataset_info(name: Optional[str] = None, *, image_size=None,
                 max_train_examples=None,
                 max_test_examples=None) -> DatasetInfo:
  """The DatasetInfo of a dataset, without reading or generating any data.

  `image_datasets(describe_only=True)` with these arguments: those left to
  None take the gin bindings of `image_datasets` (then its defaults), so
  `dataset_info()` describes what `image_datasets()` returns under the
  current gin config, from the same source. Example counts of TFDS datasets
  are the full split sizes (split names other than the defaults are not
  resolved); folder counts are file counts.
  """
  overrides = dict(name=name, image_size=image_size,
                   max_train_examples=max_train_examples,
                   max_test_examples=max_test_examples)
  return image_datasets(
      describe_only=True,
      **{key: value for key, value in overrides.items() if value is not None})
