"""Real images that installed packages ship: no files, no network.

  * 'digits' (`digits_arrays`): scikit-learn's handwritten digits
    (`sklearn.datasets.load_digits`, 1,797 grey 8x8 images, 10 classes),
    upsampled to 32x32 with bilinear interpolation, a fixed stratified split
    of 1,347 train / 450 test images. Little resolution is needed: the
    digits have 8x8 pixels of information.
  * 'textures' (`textures_arrays`): grey patches (32x32 by default) cut from
    six photographs that scikit-image bundles in its wheel
    (`skimage.data`, read from the installed package, never downloaded),
    one class per photo, each patch normalised to zero mean and unit
    standard deviation so that only texture tells the classes apart (not
    brightness or contrast). Train patches come from the top 70% of each
    photo's rows, test patches from the bottom 30%: a test patch shares no
    pixel with any train patch. Telling grass from gravel needs the fine
    detail: resolution matters here.

Both return `(x_train, y_train, x_test, y_test)`: float32 images
[n, S, S, 1] and int64 labels [n], like `synthetic.synthetic_frequency_arrays`,
and are deterministic given their `seed` (NumPy generators only). Their
settings are gin-bindable (`digits_arrays.*`, `textures_arrays.*`); the
settings classes describe a set without making it.
"""

import dataclasses
import os
from typing import Tuple

import gin
import numpy as np

DIGITS_NAME = 'digits'
TEXTURES_NAME = 'textures'

Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# ----------------------------------------------------------------------------
# digits.

DIGITS_COUNT = 1797
DIGITS_MAX_VALUE = 16.0  # load_digits' grey levels are 0..16.


def digits_images(image_size: int = 32,
                  interpolation: str = 'bilinear') -> Tuple[np.ndarray,
                                                            np.ndarray]:
  """All 1,797 digits, upsampled: float32 [1797, S, S, 1] in [0, 1] (S =
  image_size) and int64 labels [1797] in 0..9, in load_digits' order.

  interpolation: 'bilinear' (`tf.image.resize`, half-pixel centres, values
    stay in [0, 1]) or 'nearest' (each pixel repeated; needs S a multiple
    of 8: what examples/digits.py uses, `np.kron`).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images / DIGITS_MAX_VALUE).astype(np.float32)[..., None]
  if interpolation == 'nearest':
    if image_size % 8:
      raise ValueError(f"'nearest' needs image_size a multiple of 8, got "
                       f'{image_size}.')
    factor = image_size // 8
    images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
  elif interpolation == 'bilinear':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    images = tf.image.resize(images, (image_size, image_size),
                             method='bilinear').numpy()
  else:
    raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got "
                     f'{interpolation!r}.')
  return images.astype(np.float32), digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, num_test: int,
                     seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices) of a seeded split that keeps each class'
  share in both parts (within one example); both shuffled."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  # Largest-remainder rounding of each class' share of the test set.
  share = counts * num_test / len(labels)
  per_class = np.floor(share).astype(int)
  extra = np.argsort(-(share - per_class), kind='stable')
  per_class[extra[:num_test - per_class.sum()]] += 1
  train, test = [], []
  for label, take in zip(classes, per_class):
    members = rng.permutation(np.flatnonzero(labels == label))
    test.append(members[:take])
    train.append(members[take:])
  return (rng.permutation(np.concatenate(train)),
          rng.permutation(np.concatenate(test)))


@dataclasses.dataclass(frozen=True)
class DigitsSettings:
  """What the 'digits' set is (see `digits_arrays`)."""
  num_test: int = 450
  image_size: int = 32
  seed: int = 0
  name = DIGITS_NAME
  num_classes = 10

  def __post_init__(self):
    if not 10 <= self.num_test <= DIGITS_COUNT - 10:
      raise ValueError(f'num_test must be in [10, {DIGITS_COUNT - 10}], got '
                       f'{self.num_test}.')

  @property
  def num_train(self) -> int:
    return DIGITS_COUNT - self.num_test

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return (self.image_size, self.image_size, 1)

  def arrays(self) -> Arrays:
    """`(x_train, y_train, x_test, y_test)`: [n, S, S, 1] float32 in [0, 1],
    [n] int64."""
    images, labels = digits_images(self.image_size, 'bilinear')
    train, test = stratified_split(labels, self.num_test, self.seed)
    return images[train], labels[train], images[test], labels[test]


@gin.configurable(module='diffstride', denylist=['settings_only'])
def digits_arrays(num_test: int = 450, image_size: int = 32, seed: int = 0,
                  *, settings_only: bool = False):
  """The 'digits' data set: scikit-learn's digits at `image_size`.

  Returns `(x_train, y_train, x_test, y_test)`: float32 images
  [n, image_size, image_size, 1] in [0, 1] (grey levels / 16, upsampled
  from 8x8 with bilinear interpolation) and int64 labels [n] in 0..9.
  The split is stratified and fixed by `seed` (default 1,347 train / 450
  test); it does not depend on the training run's seed.
  """
  settings = DigitsSettings(num_test, image_size, seed)
  return settings if settings_only else settings.arrays()


# ----------------------------------------------------------------------------
# textures.

# (class name, file in skimage/data/): the three texture photographs
# scikit-image bundles, and three other bundled photographs that are
# textured all over (a stained tissue section, the lunar surface, a star
# field). Other bundled photos (camera, astronaut, coffee, ...) are scenes,
# and rough_wall and the Brodatz-like sets are downloaded on demand: not used.
TEXTURE_PHOTOS = (
    ('brick', 'brick.png'),
    ('grass', 'grass.png'),
    ('gravel', 'gravel.png'),
    ('tissue', 'ihc.png'),
    ('moon', 'moon.png'),
    ('stars', 'hubble_deep_field.jpg'),
)
# Patches with a smaller standard deviation (grey levels in [0, 1]) are
# divided by this instead: flat patches stay flat, not amplified noise.
TEXTURE_MIN_STD = 1.0 / 255.0


def texture_photo(filename: str) -> np.ndarray:
  """A photo bundled in scikit-image's wheel, grey, float32 [H, W] in
  [0, 1] (colour: ITU-R 601 luma, `skimage.color.rgb2gray`)."""
  from skimage import color  # pylint: disable=g-import-not-at-top
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top
  from skimage import io  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(skdata.__file__), filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is not in the installed scikit-image: '
                            'pip install scikit-image.')
  image = io.imread(path)
  if image.ndim == 3:
    image = color.rgb2gray(image[..., :3])
  else:
    image = image / 255.0
  return image.astype(np.float32)


def texture_regions(height: int, train_fraction: float,
                    patch_size: int) -> Tuple[Tuple[int, int],
                                              Tuple[int, int]]:
  """The rows [start, stop) train and test patches are cut from, in a photo
  of `height` rows: train the top `train_fraction`, test the rest."""
  boundary = int(round(height * train_fraction))
  if min(boundary, height - boundary) < patch_size:
    raise ValueError(f'A photo of {height} rows split at {train_fraction} has '
                     f'no room for {patch_size}-pixel patches on both sides.')
  return (0, boundary), (boundary, height)


def patch_positions(rows: Tuple[int, int], width: int, count: int,
                    patch_size: int,
                    rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """(top [count], left [count]): uniform random corners of whole patches
  inside rows [start, stop) of a photo `width` pixels wide."""
  top = rng.integers(rows[0], rows[1] - patch_size + 1, size=count)
  left = rng.integers(0, width - patch_size + 1, size=count)
  return top, left


def cut_patches(photo: np.ndarray, rows: Tuple[int, int], count: int,
                patch_size: int, rng: np.random.Generator) -> np.ndarray:
  """`count` patches [count, P, P] of `photo` [H, W] at `patch_positions`,
  each normalised to zero mean and unit std."""
  top, left = patch_positions(rows, photo.shape[1], count, patch_size, rng)
  offsets = np.arange(patch_size)
  patches = photo[(top[:, None] + offsets)[:, :, None],
                  (left[:, None] + offsets)[:, None, :]].astype(np.float64)
  patches = patches - patches.mean(axis=(1, 2), keepdims=True)
  std = patches.std(axis=(1, 2), keepdims=True)
  return (patches / np.maximum(std, TEXTURE_MIN_STD)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TexturesSettings:
  """What the 'textures' set is (see `textures_arrays`)."""
  num_train: int = 3000
  num_test: int = 1200
  patch_size: int = 32
  train_fraction: float = 0.7
  seed: int = 0
  name = TEXTURES_NAME
  num_classes = len(TEXTURE_PHOTOS)

  def __post_init__(self):
    if self.patch_size < 4:
      raise ValueError(f'patch_size must be >= 4, got {self.patch_size}.')
    if not 0 < self.train_fraction < 1:
      raise ValueError('train_fraction must be in (0, 1), got '
                       f'{self.train_fraction}.')

  @property
  def image_size(self) -> int:
    return self.patch_size

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return (self.patch_size, self.patch_size, 1)

  def arrays(self) -> Arrays:
    """`(x_train, y_train, x_test, y_test)`: [n, P, P, 1] float32 patches
    (each zero mean, unit std), [n] int64 labels, classes balanced within
    one example, shuffled."""
    rng = np.random.default_rng(self.seed)
    splits = {'train': ([], [], self.num_train),
              'test': ([], [], self.num_test)}
    for label, (_, filename) in enumerate(TEXTURE_PHOTOS):
      photo = texture_photo(filename)
      regions = texture_regions(photo.shape[0], self.train_fraction,
                                self.patch_size)
      for (images, labels, total), rows in zip(splits.values(), regions):
        count = (total // self.num_classes
                 + int(label < total % self.num_classes))
        images.append(cut_patches(photo, rows, count, self.patch_size, rng))
        labels.append(np.full(count, label, np.int64))
    arrays = []
    for images, labels, _ in splits.values():
      order = rng.permutation(sum(len(l) for l in labels))
      arrays += [np.concatenate(images)[order][..., None],
                 np.concatenate(labels)[order]]
    return tuple(arrays)


@gin.configurable(module='diffstride', denylist=['settings_only'])
def textures_arrays(num_train: int = 3000, num_test: int = 1200,
                    patch_size: int = 32, train_fraction: float = 0.7,
                    seed: int = 0, *, settings_only: bool = False):
  """The 'textures' data set: patches of six photographs, one class each.

  Returns `(x_train, y_train, x_test, y_test)`: float32 patches
  [n, patch_size, patch_size, 1] and int64 labels [n] in 0..5 (the order
  of `TEXTURE_PHOTOS`: brick, grass, gravel, tissue, moon, stars).

  How: each photo, made grey, is split by rows: train patches are cut
  from the top `train_fraction` of its rows, test patches from the rest
  (whole patches inside their region, so no test pixel is in a train
  patch); positions are uniform random, from `np.random.default_rng(seed)`;
  classes get equal counts (within one). Each patch is normalised to zero
  mean and unit standard deviation (divided by at least 1/255). The set
  does not depend on the training run's seed.
  """
  settings = TexturesSettings(num_train, num_test, patch_size,
                              train_fraction, seed)
  return settings if settings_only else settings.arrays()
