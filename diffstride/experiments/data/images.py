"""Image classification datasets of the DiffStride experiments.

`image_datasets(name, ...)` returns `(train, test, info)`: two batched data
sets of `(images, labels)` with float32 images `[B, H, W, C]` and float32
one-hot labels `[B, K]` (`tf.data.Dataset`s, or NumPy batches,
`array_batches.ArrayBatches`, for the sets the project makes or reads
itself: see `input_pipeline`), and a `DatasetInfo`. Datasets, each an
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

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import gin

from diffstride.experiments import optional
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import augmentation
from diffstride.experiments.data import batch_augmentation
from diffstride.experiments.data import batching
from diffstride.experiments.data import packaged
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data.image_folders import ImageFolderSource
from diffstride.experiments.data.image_sources import ArrayImageSource
from diffstride.experiments.data.image_sources import image_size_pair
from diffstride.experiments.data.image_sources import ImageSize
from diffstride.experiments.data.image_sources import ImageSource
from diffstride.experiments.data.image_sources import TFDS_DATASETS
from diffstride.experiments.data.image_sources import TfdsImageSource
from diffstride.experiments.data.sources import DatasetInfo
from diffstride.experiments.optional import tf

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
    input_pipeline: str = 'auto',
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
    input_pipeline: how the batches reach `fit`: 'tf.data' (datasets);
      'numpy' (`array_batches.ArrayBatches`, `keras.utils.PyDataset`s of
      NumPy batches: the in-memory sets and image folders, needs no
      TensorFlow); 'auto' (the default): 'numpy' for those on a backend
      other than TensorFlow, else 'tf.data' (the TFDS sets: always).
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
  if sources.numpy_pipeline(
      input_pipeline, source.has_arrays, source.describe().name,
      f"the in-memory sets ({', '.join(ARRAY_DATASETS)}) and image "
      'folders'):
    return _array_datasets(source, seed=seed, batch_size=batch_size,
                           eval_batch_size=eval_batch_size,
                           normalize=normalize, mixup_alpha=mixup_alpha,
                           shuffle_buffer=shuffle_buffer)
  optional.require_tensorflow(f'The dataset {name!r} (read by tf.data)')
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
    batches = batching.shuffled_batches(
        train_examples, train_map, batch_size, pass_seed, shuffle_buffer,
        info.num_train_examples, reshuffle=reshuffle)
    if preprocessing.augment_batch is not None:

      def augment_batch(batch, random):
        images, labels = batch
        return preprocessing.augment_batch(
            images, tf.stack([random, tf.constant(seed, tf.int64)])), labels

      randoms = batching.random_stream(pass_seed, batching.BATCH_AUGMENT,
                                       reshuffle)
      batches = tf.data.Dataset.zip((batches, randoms)).map(
          augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if mixup_alpha > 0:

      def mix(batch, random):
        images, labels = batch
        return augmentation.mixup(
            images, labels, mixup_alpha,
            tf.stack([random, tf.constant(seed, tf.int64)]))

      randoms = batching.random_stream(pass_seed, batching.MIXUP, reshuffle)
      batches = tf.data.Dataset.zip((batches, randoms)).map(
          mix, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)

  train = train_batches(seed, reshuffle=True)
  info = info.with_train_epochs(
      train, lambda epoch: train_batches(batching.epoch_seed(seed, epoch),
                                         reshuffle=False))
  test = test.map(test_map, num_parallel_calls=tf.data.AUTOTUNE)
  test = test.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
  return train, test, info


def _array_datasets(source: ImageSource, *, seed: int, batch_size: int,
                    eval_batch_size: int, normalize: bool,
                    mixup_alpha: float, shuffle_buffer: int):
  """`image_datasets`' (train, test, info) as NumPy batches (see
  `array_batches`): the same steps as the tf.data pipeline."""
  arrays = source.arrays()
  normalization = (arrays.mean, arrays.std) if normalize else None
  augment = None
  if source.augment:
    augment = functools.partial(batch_augmentation.pad_crop_flip,
                                pad_crop=source.pad_crop, flip=source.flip)
  num_classes = arrays.info.num_classes
  train_plan = array_batches.BatchPlan(
      arrays.x_train, arrays.y_train, num_classes, batch_size, seed,
      shuffle_window=shuffle_buffer, drop_remainder=True,
      normalization=normalization, augment=augment, mixup_alpha=mixup_alpha)
  test_plan = array_batches.BatchPlan(arrays.x_test, arrays.y_test,
                                      num_classes, eval_batch_size, seed,
                                      normalization=normalization)
  train = array_batches.redrawn_passes(train_plan)
  info = arrays.info.with_train_epochs(
      train, functools.partial(array_batches.fixed_pass, train_plan))
  return train, array_batches.ordered_pass(test_plan), info


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
