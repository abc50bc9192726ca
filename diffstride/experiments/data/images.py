"""Image classification input pipelines for the DiffStride experiments.

`image_datasets(name, ...)` returns `(train, test, info)`: two batched
`tf.data.Dataset`s of `(images, labels)` with float32 images `[B, H, W, C]`
and float32 one-hot labels `[B, K]`, and a `DatasetInfo`. Datasets:

  * 'cifar10', 'cifar100', 'imagenet2012': TensorFlow Datasets (TFDS), read
    from `data_dir` (else env `TFDS_DATA_DIR`, else TFDS's default
    `~/tensorflow_datasets`). With `download=False` (the default) nothing is
    ever downloaded: a dataset that is not prepared there raises
    `FileNotFoundError` saying how to get it.
  * 'synthetic_frequency': a built-in set generated in memory in a few
    seconds, whose classes differ only in spatial frequency (see
    `synthetic_frequency_arrays`). Needs no files and no network.
  * 'folder:/path/to/root': a folder of class folders
    (`root/class_a/xxx.png`, `root/class_b/yyy.jpg`, ...); the test set is a
    seeded 20% hold-out of it (`test_split=0.1` changes the fraction), or
    'folder:/train_root,/test_root' gives a separate test folder with the same
    class folders.

Train pipeline, in order: (cache) -> seeded shuffle, reshuffled every epoch ->
augmentation -> per-channel normalisation -> one-hot labels -> batch (the
final partial batch is dropped when there is at least one full batch) ->
mixup -> prefetch. Not repeated: one pass is one epoch.
  * Augmentation (`augment=True`), small images (CIFAR, synthetic, folders):
    reflect-pad `pad_crop` pixels on each side (mirror padding, not zeros:
    black borders would add artificial high frequencies, which matters for
    spectral pooling), random crop back to H x W, random horizontal flip when
    `flip`. ImageNet: Inception-style random-resized crop (area 8%-100%,
    aspect ratio 3/4-4/3) resized to `image_size` (224), random flip when
    `flip`; `pad_crop` is not used.
  * The random numbers come from stateless ops fed by a seeded
    `tf.data.Dataset.random(rerandomize_each_iteration=True)`: deterministic
    for a seed, different at every epoch.
  * Mixup (`mixup_alpha > 0`, train set only): every example of a batch is
    mixed with a random other example of the same batch with its own weight
    lam ~ Beta(alpha, alpha), images and one-hot labels alike (`mixup`).

Test pipeline: no augmentation, no mixup, same normalisation, deterministic
order, batches of `eval_batch_size or batch_size`, final partial batch kept.
ImageNet test images: central crop of 87.5% of the shorter side, resized to
`image_size` (= resize the shorter side to 256 and center-crop 224).

Normalisation (`normalize=True`): images are first scaled to [0, 1], then
`(x - mean) / std` per channel, with the usual train-set statistics for
CIFAR-10/100 and ImageNet, the statistics of the generated train set for
'synthetic_frequency', and for folders the statistics of (up to 2048 images
of) the train folder. `normalize=False` returns the [0, 1] images.

Sizes and lengths: `info.num_train_examples` / `info.num_test_examples` count
examples (after `max_*_examples`); the datasets' cardinality is known, so
`len(train)` is the number of train steps per epoch.
"""

import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple, Union

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

ImageSize = Union[int, Sequence[int], None]

SYNTHETIC_NAME = 'synthetic_frequency'
FOLDER_PREFIX = 'folder:'
KNOWN_DATASETS = ('cifar10', 'cifar100', 'imagenet2012', SYNTHETIC_NAME,
                  FOLDER_PREFIX + '/path/to/class_folders')
# Image file extensions read from class folders (those Keras decodes).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
FOLDER_IMAGE_SIZE = (32, 32)
FOLDER_TEST_FRACTION = 0.2
FOLDER_STATS_EXAMPLES = 2048
IMAGENET_IMAGE_SIZE = 224
# ImageNet eval crop: the central 224/256 of the shorter side.
IMAGENET_CENTER_CROP_FRACTION = 224 / 256
FOLDER_LAYOUT = ('root/class_a/xxx.png, root/class_a/xxy.jpg, ..., '
                 'root/class_b/yyy.png, ... (one sub-folder per class, '
                 'images inside)')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple  # One model input: (H, W, C) images, (samples,) audio
  num_train_examples: int
  num_test_examples: int


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  num_classes: int
  image_shape: tuple
  train_split: str
  test_split: str
  num_train: int
  num_test: int
  mean: tuple  # Per channel, images in [0, 1].
  std: tuple


_TFDS = {
    'cifar10': _TfdsSpec(10, (32, 32, 3), 'train', 'test', 50_000, 10_000,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': _TfdsSpec(100, (32, 32, 3), 'train', 'test', 50_000, 10_000,
                          (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': _TfdsSpec(1000, (224, 224, 3), 'train', 'validation',
                              1_281_167, 50_000, (0.485, 0.456, 0.406),
                              (0.229, 0.224, 0.225)),
}


# ----------------------------------------------------------------------------
# Built-in data: synthetic_frequency.

SYNTHETIC_FREQUENCY_RANGE = (0.05, 0.45)  # cycles per pixel (Nyquist: 0.5)
SYNTHETIC_BAND_OVERLAP = 0.1  # Fraction of a band's width added on each side.
_SYNTHETIC_CHUNK = 100  # Images generated per RNG stream.


def synthetic_frequency_bands(num_classes: int = 10) -> np.ndarray:
  """[num_classes, 2] (low, high) radial frequency of each class, cycles/px."""
  edges = np.linspace(*SYNTHETIC_FREQUENCY_RANGE, num_classes + 1)
  margin = SYNTHETIC_BAND_OVERLAP * (edges[1] - edges[0])
  return np.stack([edges[:-1] - margin, edges[1:] + margin], axis=1)


def _synthetic_labels(n: int, num_classes: int,
                      rng: np.random.Generator) -> np.ndarray:
  # Rounds of a random permutation of the classes: every prefix is balanced.
  rounds = -(-n // num_classes)
  return np.concatenate(
      [rng.permutation(num_classes) for _ in range(rounds)])[:n]


def _synthetic_images(labels: np.ndarray, num_classes: int, size: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Images [n, size, size, 3] float32 of the given classes (see below)."""
  n = len(labels)
  bands = synthetic_frequency_bands(num_classes)
  yy, xx = np.meshgrid(np.arange(size, dtype=np.float32),
                       np.arange(size, dtype=np.float32), indexing='ij')
  # 2 or 3 gratings per image.
  max_gratings = 3
  num_gratings = rng.integers(2, max_gratings + 1, size=n)
  active = np.arange(max_gratings)[None, :] < num_gratings[:, None]
  freq = rng.uniform(bands[labels, :1], bands[labels, 1:],
                     size=(n, max_gratings))
  theta = rng.uniform(0.0, np.pi, size=(n, max_gratings))
  phase = rng.uniform(0.0, 2 * np.pi, size=(n, max_gratings))
  amplitude = rng.uniform(0.06, 0.12, size=(n, max_gratings)) * active
  colour = rng.uniform(0.2, 1.0, size=(n, max_gratings, 3))
  colour /= colour.max(axis=-1, keepdims=True)
  kx = (freq * np.cos(theta)).astype(np.float32)[..., None, None]
  ky = (freq * np.sin(theta)).astype(np.float32)[..., None, None]
  gratings = amplitude.astype(np.float32)[..., None, None] * np.cos(
      2 * np.pi * (kx * xx + ky * yy) + phase.astype(np.float32)[..., None,
                                                                 None])
  images = np.einsum('ngij,ngc->nijc', gratings, colour.astype(np.float32))
  # Background: a random mean colour and two broad Gaussian blobs.
  images += rng.uniform(0.3, 0.7, size=(n, 1, 1, 3)).astype(np.float32)
  num_blobs = 2
  cy = rng.uniform(0, size, size=(n, num_blobs))[..., None, None]
  cx = rng.uniform(0, size, size=(n, num_blobs))[..., None, None]
  sigma = rng.uniform(size / 8, size / 3, size=(n, num_blobs))[..., None, None]
  blob_colour = rng.uniform(-0.2, 0.2, size=(n, num_blobs, 3))
  blobs = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * sigma**2))
  images += np.einsum('nbij,nbc->nijc', blobs.astype(np.float32),
                      blob_colour.astype(np.float32))
  images += rng.normal(0.0, 0.05, size=images.shape).astype(np.float32)
  return images.astype(np.float32)


def _synthetic_split(n: int, num_classes: int, size: int,
                     seed_sequence: np.random.SeedSequence):
  label_seed, image_seed = seed_sequence.spawn(2)
  # Whole chunks, each from its own stream, then cut: the first examples do
  # not depend on n.
  num_chunks = -(-n // _SYNTHETIC_CHUNK)
  labels = _synthetic_labels(num_chunks * _SYNTHETIC_CHUNK, num_classes,
                             np.random.default_rng(label_seed))
  chunk_seeds = image_seed.spawn(num_chunks)
  images = [np.zeros((0, size, size, 3), np.float32)]
  for i in range(num_chunks):
    chunk = labels[i * _SYNTHETIC_CHUNK:(i + 1) * _SYNTHETIC_CHUNK]
    images.append(_synthetic_images(chunk, num_classes, size,
                                    np.random.default_rng(chunk_seeds[i])))
  return np.concatenate(images)[:n], labels[:n].astype(np.int64)


@gin.configurable(module='diffstride')
def synthetic_frequency_arrays(
    num_train: int = 5000,
    num_test: int = 1000,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The 'synthetic_frequency' data set: classes that differ in frequency.

  Returns `(x_train, y_train, x_test, y_test)`: float32 images
  `[n, image_size, image_size, 3]` and int64 labels in `[0, num_classes)`.

  How an image of class k is made (all sizes in pixels of a
  `image_size x image_size` image, frequencies in cycles per pixel, Nyquist =
  0.5):
    1. Class bands: [0.05, 0.45] is cut into `num_classes` equal bands, each
       widened by 10% of its width on both sides, so neighbouring classes
       overlap slightly (10 classes: band k = [0.036 + 0.04 k,
       0.094 + 0.04 k]). `synthetic_frequency_bands` returns them.
    2. Signal: the sum of 2 or 3 (uniformly) sinusoidal gratings
       `a * cos(2 pi f (x cos t + y sin t) + p) * c` with radial frequency f
       uniform in band k, orientation t uniform in [0, pi), phase p uniform
       in [0, 2 pi), amplitude a uniform in [0.06, 0.12] and colour weights c
       (3 values uniform in [0.2, 1], divided by their maximum).
    3. Background, the same for every class: a mean colour uniform in
       [0.3, 0.7] per channel, plus two Gaussian blobs (centre uniform in the
       image, sigma uniform in [size/8, size/3], colour uniform in [-0.2, 0.2]
       per channel), which only have low frequencies.
    4. Pixel noise: i.i.d. Gaussian, sigma 0.05.
  Values are roughly in [0, 1] (about -0.3 to 1.3); they are not clipped, so
  the spectrum is exactly the one described.

  Only the frequency band carries the class: the mean colour of an image says
  nothing about it (a nearest-centroid classifier on the mean colour is at
  chance, about 10%), while a nearest-centroid classifier on the radially
  binned magnitude of the 2-D FFT gets over 90% of the test set right.
  Halving the resolution (2x2 average pooling) drops the latter to about 65%:
  the high-frequency classes need resolution, which is what learned strides
  trade against compute. A small CNN (3 convolutions, Adam, 8 epochs, default
  pipeline) got 94% test accuracy at full resolution, 81% after a 2x2 average
  pooling of its input and 53% after a 4x4 one (one run, seed 0).

  Randomness: only NumPy generators seeded from `seed` (never the global
  RNG). The train and test sets come from separate streams, and the first n
  examples of a split do not depend on the requested split size. Labels are
  balanced in every prefix (class counts differ by at most 1): they are
  consecutive random permutations of the classes.

  Args:
    num_train: number of train images.
    num_test: number of test images.
    num_classes: number of classes (frequency bands).
    image_size: height and width of the images.
    seed: the data set's seed.
  """
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2, got {num_classes}.')
  if image_size < 4:
    raise ValueError(f'image_size must be >= 4, got {image_size}.')
  train_seeds, test_seeds = np.random.SeedSequence(seed).spawn(2)
  x_train, y_train = _synthetic_split(num_train, num_classes, image_size,
                                      train_seeds)
  x_test, y_test = _synthetic_split(num_test, num_classes, image_size,
                                    test_seeds)
  return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------
# Augmentation and mixup.


def _seeds(seed: tf.Tensor, num: int) -> tf.Tensor:
  return tf.random.experimental.stateless_split(seed, num)


def pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad_crop: int = 4,
                  flip: bool = True) -> tf.Tensor:
  """Reflect-pads `pad_crop` px, random-crops back, random-flips [H, W, C].

  `seed`: int32/int64 [2], for the stateless random ops.
  """
  crop_seed, flip_seed = tf.unstack(_seeds(seed, 2))
  if pad_crop:
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad_crop, pad_crop], [pad_crop, pad_crop], [0, 0]],
                    mode='REFLECT')
    image = tf.image.stateless_random_crop(padded, shape, crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def batch_pad_crop_flip(images: tf.Tensor, seed: tf.Tensor, pad_crop: int = 4,
                        flip: bool = True) -> tf.Tensor:
  """`pad_crop_flip` of every image of a batch [B, H, W, C] in a few ops.

  Each image gets its own crop offset and flip. Working on whole batches
  costs a small fraction of per-image ops on CPU, which matters when the
  input pipeline shares two cores with training (see
  benchmarks/input_pipeline_benchmark.py).

  `seed`: int32/int64 [2], for the stateless random ops.
  """
  crop_seed, flip_seed = tf.unstack(_seeds(seed, 2))
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  if pad_crop:
    padded = tf.pad(images, [[0, 0], [pad_crop, pad_crop],
                             [pad_crop, pad_crop], [0, 0]], mode='REFLECT')
    offsets = tf.random.stateless_uniform(
        [batch, 2], crop_seed, minval=0, maxval=2 * pad_crop + 1,
        dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]  # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[None, :]  # [B, W]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    images = tf.gather(images, cols, axis=2, batch_dims=1)
  if flip:
    flips = tf.random.stateless_uniform([batch], flip_seed) < 0.5
    images = tf.where(flips[:, None, None, None],
                      tf.reverse(images, axis=[2]), images)
  return images


def shuffled_batches(examples: tf.data.Dataset, map_fn, batch_size: int,
                     seed: int, shuffle_buffer: int,
                     num_examples: int) -> tf.data.Dataset:
  """Shuffles, maps `map_fn(example, random)` and batches a training set.

  `random` is an int64 scalar from a seeded `tf.data.Dataset.random` stream
  that changes every epoch, for per-example stateless augmentation. The
  batch dimension is static (remainder dropped) whenever there is at least
  one full batch.
  """
  examples = examples.shuffle(max(int(shuffle_buffer), 1), seed=seed,
                              reshuffle_each_iteration=True)
  examples = tf.data.Dataset.zip(
      (examples, tf.data.Dataset.random(seed=seed,
                                        rerandomize_each_iteration=True)))
  examples = examples.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return examples.batch(batch_size, drop_remainder=num_examples >= batch_size)


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float,
          seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Mixes each example of a batch with a random partner of the same batch.

  `out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]` for images and labels,
  with lam[i] ~ Beta(alpha, alpha) and perm a random permutation.

  Args:
    images: [B, H, W, C] float.
    labels: [B, K] float (one-hot).
    alpha: the Beta distribution's parameter (> 0).
    seed: int32/int64 [2], for the stateless random ops.
  """
  gamma_seed_1, gamma_seed_2, perm_seed = tf.unstack(_seeds(seed, 3))
  batch = tf.shape(images)[0]
  g1 = tf.random.stateless_gamma([batch], gamma_seed_1, alpha=alpha)
  g2 = tf.random.stateless_gamma([batch], gamma_seed_2, alpha=alpha)
  total = g1 + g2
  lam = tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 1.0)
  perm = tf.argsort(tf.random.stateless_uniform([batch], perm_seed))
  lam_images = tf.cast(tf.reshape(lam, [-1, 1, 1, 1]), images.dtype)
  lam_labels = tf.cast(tf.reshape(lam, [-1, 1]), labels.dtype)
  images = lam_images * images + (1 - lam_images) * tf.gather(images, perm)
  labels = lam_labels * labels + (1 - lam_labels) * tf.gather(labels, perm)
  return images, labels


def _to_unit(image: tf.Tensor, scale: float) -> tf.Tensor:
  image = tf.cast(image, tf.float32)
  return image / scale if scale != 1 else image


def _resize(image: tf.Tensor, size: Optional[Tuple[int, int]]) -> tf.Tensor:
  if size is None:
    return image
  return tf.image.resize(image, size, method='bilinear', antialias=True)


# ----------------------------------------------------------------------------
# ImageNet preprocessing (on JPEG bytes: decode only the crop).


def imagenet_train_image(jpeg: tf.Tensor, seed: tf.Tensor,
                         image_size: int = IMAGENET_IMAGE_SIZE,
                         flip: bool = True) -> tf.Tensor:
  """Inception-style random-resized crop + flip of a JPEG, float32 [0, 1]."""
  box_seed, flip_seed = tf.unstack(_seeds(seed, 2))
  shape = tf.image.extract_jpeg_shape(jpeg)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=box_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(box_size)
  image = tf.image.decode_and_crop_jpeg(
      jpeg, tf.stack([offset_y, offset_x, height, width]), channels=3)
  image = _resize(_to_unit(image, 255.0), (image_size, image_size))
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def imagenet_eval_image(jpeg: tf.Tensor,
                        image_size: int = IMAGENET_IMAGE_SIZE) -> tf.Tensor:
  """Central crop (87.5% of the shorter side) resized, float32 [0, 1]."""
  shape = tf.image.extract_jpeg_shape(jpeg)
  height, width = shape[0], shape[1]
  crop = tf.cast(
      tf.round(IMAGENET_CENTER_CROP_FRACTION *
               tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
  crop = tf.maximum(crop, 1)
  window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop,
                     crop])
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  return _resize(_to_unit(image, 255.0), (image_size, image_size))


# ----------------------------------------------------------------------------
# Sources: unbatched (image, int label) datasets + their preprocessing.


@dataclasses.dataclass
class _Source:
  train: tf.data.Dataset
  test: tf.data.Dataset
  info: DatasetInfo
  mean: Optional[Sequence[float]]  # None: computed from the train set.
  std: Optional[Sequence[float]]
  train_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (raw, seed) -> img
  eval_fn: Callable[[tf.Tensor], tf.Tensor]  # raw -> float32 [0, 1]-ish
  cacheable: bool
  # (images [B, H, W, C], seed) -> images: augmentation applied per batch,
  # after `train_fn` and normalisation; None for none.
  batch_fn: Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = None


def _size_pair(image_size: ImageSize) -> Optional[Tuple[int, int]]:
  if image_size is None:
    return None
  if isinstance(image_size, (int, np.integer)):
    return (int(image_size), int(image_size))
  size = tuple(int(s) for s in image_size)
  if len(size) != 2:
    raise ValueError(f'image_size must be an int or (height, width), got '
                     f'{image_size!r}.')
  return size


def _small_image_fns(scale: float, size: Optional[Tuple[int, int]],
                     augment: bool, pad_crop: int, flip: bool):
  """Preprocessing of small in-memory style images: (train_fn, eval_fn,
  batch_fn). Augmentation (pad-and-crop, flip) runs per batch; it commutes
  with the per-channel normalisation applied before it."""

  def eval_fn(image):
    return _resize(_to_unit(image, scale), size)

  def train_fn(image, seed):
    del seed
    return eval_fn(image)

  def batch_fn(images, seed):
    return batch_pad_crop_flip(images, seed, pad_crop=pad_crop, flip=flip)

  return train_fn, eval_fn, (batch_fn if augment else None)


def _check_pad_crop(pad_crop: int, shape: Sequence[int]):
  if pad_crop < 0 or pad_crop >= min(shape[:2]):
    raise ValueError(f'pad_crop must be in [0, {min(shape[:2])}) for images '
                     f'{tuple(shape)} (reflection padding), got {pad_crop}.')


def _resolve_data_dir(data_dir) -> Optional[str]:
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or None
  return os.fspath(data_dir) if data_dir is not None else None


def _missing_message(name: str, builder, data_dir: Optional[str]) -> str:
  searched = data_dir or os.path.dirname(os.path.dirname(
      os.fspath(builder.data_dir)))
  dir_arg = repr(searched)
  if name == 'imagenet2012':
    manual = os.path.join(searched, 'downloads', 'manual')
    return (
        f"Dataset 'imagenet2012' is not prepared in data_dir {searched!r} "
        f'(looked for {os.fspath(builder.data_dir)}), and download=False '
        'never downloads. ImageNet cannot be downloaded automatically (TFDS '
        'manual download): get ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar from https://image-net.org, put them in '
        f'{manual}/, then run `python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('imagenet2012', data_dir={dir_arg})"
        '.download_and_prepare()"` (or call image_datasets with '
        'download=True), or point data_dir / TFDS_DATA_DIR at a directory '
        'where it is already prepared.')
  return (
      f"Dataset '{name}' is not prepared in data_dir {searched!r} (looked "
      f'for {os.fspath(builder.data_dir)}), and download=False never '
      'downloads. On a machine with internet, run `python -c "import '
      f"tensorflow_datasets as tfds; tfds.builder('{name}', "
      f'data_dir={dir_arg}).download_and_prepare()"` (and copy '
      f'{os.path.join(searched, name)} here if it is another machine), or '
      'call image_datasets with download=True, or point data_dir / '
      'TFDS_DATA_DIR at a directory where it is already prepared.')


def _tfds_as_dataset(builder, name: str, split: str, data_dir, **kwargs):
  try:
    return builder.as_dataset(split=split, as_supervised=True, **kwargs)
  except AssertionError as e:
    # What TFDS raises for an unprepared dataset ("could not find data").
    if 'could not find data' in str(e) or 'download_and_prepare' in str(e):
      raise FileNotFoundError(_missing_message(name, builder, data_dir)) from e
    raise


def _num_examples(ds: tf.data.Dataset, builder, split: str,
                  fallback: int) -> int:
  cardinality = int(ds.cardinality())
  if cardinality >= 0:
    return cardinality
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    return fallback


def _take(ds: tf.data.Dataset, n: Optional[int]) -> tf.data.Dataset:
  return ds if n is None else ds.take(int(n))


def _tfds_source(name, *, data_dir, download, seed, train_split, test_split,
                 image_size, augment, pad_crop, flip, max_train_examples,
                 max_test_examples) -> _Source:
  spec = _TFDS[name]
  data_dir = _resolve_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if download:
    try:
      builder.download_and_prepare()
    except AssertionError as e:
      if 'manual' not in str(e).lower():
        raise
      # Missing ImageNet tars in <data_dir>/downloads/manual.
      raise FileNotFoundError(_missing_message(name, builder, data_dir)) from e
    except ModuleNotFoundError as e:
      # tensorflow-datasets 4.9 prepares data with `importlib_resources`
      # without declaring it as a dependency.
      raise ModuleNotFoundError(
          f'download=True: TFDS needs the module {e.name!r} to download and '
          f"prepare '{name}'; run `pip install {e.name}`.", name=e.name) from e
  train_split = train_split or spec.train_split
  test_split = test_split or spec.test_split
  imagenet = name == 'imagenet2012'
  decoders = {'image': tfds.decode.SkipDecoding()} if imagenet else None
  train = _tfds_as_dataset(
      builder, name, train_split, data_dir, decoders=decoders,
      # Shuffled shards unless a fixed subset is asked for.
      shuffle_files=max_train_examples is None,
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  test = _tfds_as_dataset(
      builder, name, test_split, data_dir, decoders=decoders,
      shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False))
  train = _take(train, max_train_examples)
  test = _take(test, max_test_examples)
  size = _size_pair(image_size)
  if imagenet:
    if size is not None and size[0] != size[1]:
      raise ValueError(f'imagenet2012 crops are square; got {image_size!r}.')
    side = size[0] if size else IMAGENET_IMAGE_SIZE
    image_shape = (side, side, 3)

    def train_fn(jpeg, seed_):
      if augment:
        return imagenet_train_image(jpeg, seed_, side, flip=flip)
      return imagenet_eval_image(jpeg, side)

    eval_fn = lambda jpeg: imagenet_eval_image(jpeg, side)
    batch_fn = None
  else:
    image_shape = tuple(size) + (3,) if size else spec.image_shape
    if augment:
      _check_pad_crop(pad_crop, image_shape)
    train_fn, eval_fn, batch_fn = _small_image_fns(255.0, size, augment,
                                                   pad_crop, flip)
  info = DatasetInfo(
      name=name, num_classes=spec.num_classes, image_shape=image_shape,
      num_train_examples=_num_examples(train, builder, train_split,
                                       spec.num_train),
      num_test_examples=_num_examples(test, builder, test_split,
                                      spec.num_test))
  return _Source(train, test, info, spec.mean, spec.std, train_fn, eval_fn,
                 cacheable=not imagenet, batch_fn=batch_fn)


def _gin_value(configurable: str, parameter: str, default):
  try:
    return gin.query_parameter(f'{configurable}.{parameter}')
  except ValueError:
    return default


def _synthetic_settings(image_size: ImageSize, max_train_examples,
                        max_test_examples):
  """The arguments of synthetic_frequency_arrays: gin bindings, then limits."""
  get = lambda p, d: _gin_value('synthetic_frequency_arrays', p, d)
  num_train, num_test = get('num_train', 5000), get('num_test', 1000)
  if max_train_examples is not None:
    num_train = min(num_train, int(max_train_examples))
  if max_test_examples is not None:
    num_test = min(num_test, int(max_test_examples))
  size = _size_pair(image_size)
  if size is not None and size[0] != size[1]:
    raise ValueError(f'{SYNTHETIC_NAME} images are square; got '
                     f'{image_size!r}.')
  kwargs = dict(num_train=num_train, num_test=num_test)
  if size is not None:
    kwargs['image_size'] = size[0]
  side = size[0] if size else get('image_size', 32)
  return kwargs, get('num_classes', 10), side


def _synthetic_source(*, seed, train_split, test_split, image_size, augment,
                      pad_crop, flip, max_train_examples,
                      max_test_examples) -> _Source:
  del seed  # The data set is fixed: synthetic_frequency_arrays.seed (gin).
  if train_split or test_split:
    raise ValueError(f'{SYNTHETIC_NAME} has no named splits; use '
                     'max_train_examples / max_test_examples or bind '
                     'synthetic_frequency_arrays.num_train / num_test.')
  kwargs, _, _ = _synthetic_settings(image_size, max_train_examples,
                                     max_test_examples)
  x_train, y_train, x_test, y_test = synthetic_frequency_arrays(**kwargs)
  num_classes = int(_gin_value('synthetic_frequency_arrays', 'num_classes',
                               10))
  image_shape = tuple(x_train.shape[1:])
  if augment:
    _check_pad_crop(pad_crop, image_shape)
  train_fn, eval_fn, batch_fn = _small_image_fns(1.0, None, augment, pad_crop,
                                                 flip)
  info = DatasetInfo(SYNTHETIC_NAME, num_classes, image_shape, len(x_train),
                     len(x_test))
  mean = x_train.mean(axis=(0, 1, 2)) if len(x_train) else np.zeros(3)
  std = x_train.std(axis=(0, 1, 2)) if len(x_train) else np.ones(3)
  return _Source(
      tf.data.Dataset.from_tensor_slices((x_train, y_train)),
      tf.data.Dataset.from_tensor_slices((x_test, y_test)), info,
      tuple(float(m) for m in mean), tuple(float(s) for s in std), train_fn,
      eval_fn, cacheable=False, batch_fn=batch_fn)


def class_folder_names(path: str, kind: str, layout: str) -> list:
  """Sorted sub-folder (class) names of a `kind` folder ('Image', 'Audio').

  Raises FileNotFoundError if `path` is not a directory and ValueError if it
  has no sub-folders, both naming the expected `layout`.
  """
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(
        f'{kind} folder {path!r} does not exist (or is not a directory). '
        f'Expected layout: {layout}.')
  entries = tf.io.gfile.listdir(path)
  classes = sorted(e.rstrip('/') for e in entries
                   if tf.io.gfile.isdir(os.path.join(path, e)))
  if not classes:
    problem = 'is empty' if not entries else 'has no class sub-folders'
    raise ValueError(f'{kind} folder {path!r} {problem}. Expected layout: '
                     f'{layout}.')
  return classes


def _class_folders(path: str) -> list:
  """Sorted class folder names of `path`; raises if the layout is wrong."""
  classes = class_folder_names(path, 'Image', FOLDER_LAYOUT)
  num_images = 0
  for name in classes:
    for _, _, files in tf.io.gfile.walk(os.path.join(path, name)):
      num_images += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
  if not num_images:
    raise ValueError(
        f'Image folder {path!r} has class sub-folders {classes} but no images '
        f'({", ".join(IMAGE_EXTENSIONS)}) in them. Expected layout: '
        f'{FOLDER_LAYOUT}.')
  return classes


def _parse_folder_name(name: str) -> Tuple[str, Optional[str]]:
  paths = [p.strip() for p in name[len(FOLDER_PREFIX):].split(',')]
  if not paths[0] or len(paths) > 2 or (len(paths) == 2 and not paths[1]):
    raise ValueError(
        f'Bad folder dataset name {name!r}: use "folder:/train_root" or '
        '"folder:/train_root,/test_root".')
  return paths[0], (paths[1] if len(paths) == 2 else None)


def _folder_test_fraction(test_split, kind: str = 'image') -> float:
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


def _folder_stats(ds: tf.data.Dataset) -> Tuple[tuple, tuple]:
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


def _folder_source(name, *, seed, train_split, test_split, image_size,
                   augment, pad_crop, flip, normalize, max_train_examples,
                   max_test_examples) -> _Source:
  if train_split:
    raise ValueError('Folder datasets have no named splits: the train set is '
                     'the (first) folder; test_split is the held-out fraction '
                     'of a single folder.')
  train_dir, test_dir = _parse_folder_name(name)
  classes = _class_folders(train_dir)
  size = _size_pair(image_size) or FOLDER_IMAGE_SIZE
  common = dict(labels='inferred', label_mode='int', color_mode='rgb',
                batch_size=None, image_size=size, seed=seed,
                interpolation='bilinear', crop_to_aspect_ratio=True,
                verbose=False)
  if test_dir is None:
    train, test = keras.utils.image_dataset_from_directory(
        train_dir, shuffle=True, subset='both',
        validation_split=_folder_test_fraction(test_split), **common)
  else:
    if test_split is not None:
      raise ValueError('test_split is not used with a separate test folder.')
    test_classes = _class_folders(test_dir)
    if test_classes != classes:
      raise ValueError(
          f'The test folder {test_dir!r} has class folders {test_classes}, '
          f'the train folder {train_dir!r} has {classes}: they must match.')
    train = keras.utils.image_dataset_from_directory(
        train_dir, shuffle=True, class_names=classes, **common)
    test = keras.utils.image_dataset_from_directory(
        test_dir, shuffle=False, class_names=classes, **common)
  train = _take(train, max_train_examples)
  test = _take(test, max_test_examples)
  image_shape = tuple(size) + (3,)
  if augment:
    _check_pad_crop(pad_crop, image_shape)
  train_fn, eval_fn, batch_fn = _small_image_fns(255.0, None, augment,
                                                 pad_crop, flip)
  mean, std = _folder_stats(train) if normalize else (None, None)
  info = DatasetInfo(name, len(classes), image_shape,
                     int(train.cardinality()), int(test.cardinality()))
  logging.info('Folder dataset %s: %d classes %s, %d train / %d test images.',
               name, len(classes), classes, info.num_train_examples,
               info.num_test_examples)
  return _Source(train, test, info, mean, std, train_fn, eval_fn,
                 cacheable=True, batch_fn=batch_fn)


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


def _check_name(name) -> str:
  return check_dataset_name(name, list(_TFDS) + [SYNTHETIC_NAME],
                            KNOWN_DATASETS)


# ----------------------------------------------------------------------------
# The public entry points.


# `seed` is given by the training loop (train.seed / --seed): not bindable.
@gin.configurable(module='diffstride', denylist=['seed'])
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
) -> Tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
  """(train, test, info): batched datasets of (float32 images [B,H,W,C], float32 one-hot labels [B,K]).

  See the module docstring for the pipelines.

  Args:
    name: 'cifar10', 'cifar100', 'imagenet2012', 'synthetic_frequency',
      'folder:/root' or 'folder:/train_root,/test_root'.
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
      aspect ratio); synthetic_frequency: generated at that size; CIFAR:
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

  Returns:
    (train, test, info).

  Raises:
    ValueError: unknown dataset name, bad arguments, or a folder without
      class folders / images.
    FileNotFoundError: a TFDS dataset is not prepared in data_dir (and
      download=False), or a folder does not exist.
  """
  key = _check_name(name)
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  eval_batch_size = int(eval_batch_size or batch_size)
  if mixup_alpha < 0:
    raise ValueError(f'mixup_alpha must be >= 0, got {mixup_alpha}.')
  common = dict(seed=seed, train_split=train_split, test_split=test_split,
                image_size=image_size, augment=augment, pad_crop=pad_crop,
                flip=flip, max_train_examples=max_train_examples,
                max_test_examples=max_test_examples)
  if key.startswith(FOLDER_PREFIX):
    source = _folder_source(key, normalize=normalize, **common)
  elif key == SYNTHETIC_NAME:
    source = _synthetic_source(**common)
  else:
    source = _tfds_source(key, data_dir=data_dir, download=download, **common)

  info = source.info
  num_classes = info.num_classes
  if normalize:
    mean = tf.constant(source.mean, tf.float32)
    std = tf.constant(source.std, tf.float32)
    norm = lambda image: (image - mean) / std
  else:
    norm = lambda image: image

  def train_map(example, random):
    image, label = example
    seed_ = tf.stack([random, tf.constant(seed, tf.int64)])
    image = norm(source.train_fn(image, seed_))
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)

  def test_map(image, label):
    image = norm(source.eval_fn(image))
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)

  train, test = source.train, source.test
  if cache and source.cacheable:
    train, test = train.cache(), test.cache()
  train = shuffled_batches(train, train_map, batch_size, seed, shuffle_buffer,
                           info.num_train_examples)
  if source.batch_fn is not None:
    batch_seeds = tf.data.Dataset.random(seed=seed + 2,
                                         rerandomize_each_iteration=True)

    def augment_batch(batch, random):
      images, labels = batch
      return source.batch_fn(
          images, tf.stack([random, tf.constant(seed, tf.int64)])), labels

    train = tf.data.Dataset.zip((train, batch_seeds)).map(
        augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
  if mixup_alpha > 0:
    mix_seeds = tf.data.Dataset.random(seed=seed + 1,
                                       rerandomize_each_iteration=True)

    def mix(batch, random):
      images, labels = batch
      return mixup(images, labels, mixup_alpha,
                   tf.stack([random, tf.constant(seed, tf.int64)]))

    train = tf.data.Dataset.zip((train, mix_seeds)).map(
        mix, num_parallel_calls=tf.data.AUTOTUNE)
  train = train.prefetch(tf.data.AUTOTUNE)
  test = test.map(test_map, num_parallel_calls=tf.data.AUTOTUNE)
  test = test.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
  return train, test, info


def dataset_info(name: Optional[str] = None, *, image_size=None,
                 max_train_examples=None,
                 max_test_examples=None) -> DatasetInfo:
  """The DatasetInfo of a dataset, without reading or generating any data.

  Arguments left to None take the gin bindings of `image_datasets` (then its
  defaults), so `dataset_info()` describes what `image_datasets()` would
  return under the current gin config. Example counts are the full split
  sizes (TFDS split names other than the defaults are not resolved); folder
  counts are file counts.
  """
  get = lambda p, d: _gin_value('image_datasets', p, d)
  name = name if name is not None else get('name', 'cifar10')
  image_size = image_size if image_size is not None else get('image_size',
                                                             None)
  if max_train_examples is None:
    max_train_examples = get('max_train_examples', None)
  if max_test_examples is None:
    max_test_examples = get('max_test_examples', None)
  key = _check_name(name)
  limit = lambda n, m: n if m is None else min(n, int(m))
  size = _size_pair(image_size)
  if key.startswith(FOLDER_PREFIX):
    train_dir, test_dir = _parse_folder_name(key)
    classes = _class_folders(train_dir)

    def count(path):
      return sum(
          sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
          for c in classes
          for _, _, files in tf.io.gfile.walk(os.path.join(path, c)))

    num_train = count(train_dir)
    if test_dir is None:
      fraction = _folder_test_fraction(get('test_split', None))
      num_test = int(fraction * num_train)
      num_train -= num_test
    else:
      num_test = count(test_dir)
    shape = tuple(size or FOLDER_IMAGE_SIZE) + (3,)
    return DatasetInfo(key, len(classes), shape,
                       limit(num_train, max_train_examples),
                       limit(num_test, max_test_examples))
  if key == SYNTHETIC_NAME:
    kwargs, num_classes, side = _synthetic_settings(
        image_size, max_train_examples, max_test_examples)
    return DatasetInfo(key, int(num_classes), (side, side, 3),
                       kwargs['num_train'], kwargs['num_test'])
  spec = _TFDS[key]
  if key == 'imagenet2012':
    side = size[0] if size else IMAGENET_IMAGE_SIZE
    shape = (side, side, 3)
  else:
    shape = tuple(size) + (3,) if size else spec.image_shape
  return DatasetInfo(key, spec.num_classes, shape,
                     limit(spec.num_train, max_train_examples),
                     limit(spec.num_test, max_test_examples))


def steps_per_epoch(info: DatasetInfo, batch_size: int) -> int:
  """Train batches per epoch of `image_datasets` (partial batch dropped)."""
  if info.num_train_examples >= batch_size:
    return info.num_train_examples // batch_size
  return 1 if info.num_train_examples else 0
