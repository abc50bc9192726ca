"""Image preprocessing and augmentation ops of the input pipelines.

All random ops are stateless: `seed` is an int32/int64 [2] tensor, so a
pipeline that feeds them seeds from a seeded `tf.data.Dataset.random` is
deterministic for a seed and differs at every epoch.

  * `batch_pad_crop_flip`: small images (CIFAR, synthetic, folders), a whole
    batch [B, H, W, C] at a time: reflect-pad, random crop back, random
    horizontal flip (`batch_augmentation.pad_crop_flip`, the NumPy function
    every pipeline shares).
  * `mixup`: mixes every example of a batch with a random other one
    (`batch_augmentation.mixup`).
  * `imagenet_train_image` / `imagenet_eval_image`: ImageNet on JPEG bytes
    (only the crop is decoded): Inception-style random-resized crop + flip,
    and the central crop of evaluation; both float32 [S, S, 3] in [0, 1].
  * `to_unit_range`, `resize_image`: the [0, 1] scaling and bilinear resize
    every image goes through.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from diffstride.experiments.data import batch_augmentation
from diffstride.experiments.optional import tf

IMAGENET_IMAGE_SIZE = 224
# ImageNet eval crop: the central 224/256 of the shorter side.
IMAGENET_CENTER_CROP_FRACTION = 224 / 256


def _split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
  """`num` independent stateless seeds [num, 2] from one seed [2]."""
  return tf.random.experimental.stateless_split(seed, num)


def to_unit_range(image: tf.Tensor, scale: float) -> tf.Tensor:
  """float32 `image / scale` (scale 255: uint8 pixels to [0, 1])."""
  image = tf.cast(image, tf.float32)
  return image / scale if scale != 1 else image


def resize_image(image: tf.Tensor,
                 size: Optional[Tuple[int, int]]) -> tf.Tensor:
  """Bilinear, antialiased resize of [H, W, C] (or [B, H, W, C]) to
  `size` (height, width); unchanged if `size` is None."""
  if size is None:
    return image
  return tf.image.resize(image, size, method='bilinear', antialias=True)


# ----------------------------------------------------------------------------
# Small images: pad, crop and flip whole batches.


def check_pad_crop(pad_crop: int, shape: Sequence[int]):
  """ValueError unless reflection padding by `pad_crop` fits images `shape`
  (H, W, C): 0 <= pad_crop < min(H, W)."""
  if pad_crop < 0 or pad_crop >= min(shape[:2]):
    raise ValueError(f'pad_crop must be in [0, {min(shape[:2])}) for images '
                     f'{tuple(shape)} (reflection padding), got {pad_crop}.')


def batch_pad_crop_flip(images: tf.Tensor, seed: tf.Tensor, pad_crop: int = 4,
                        flip: bool = True) -> tf.Tensor:
  """`batch_augmentation.pad_crop_flip` of a batch [B, H, W, C] inside
  `tf.data`, its random generator keyed by `seed` (int32/int64 [2]).

  On whole batches, which costs a small fraction of per-image ops on CPU
  (see benchmarks/input_pipeline_benchmark.py). Returns [B, H, W, C].
  """
  def apply(images, seed):
    return batch_augmentation.pad_crop_flip(
        images, batch_augmentation.generator(seed), pad_crop, flip)

  out = tf.numpy_function(apply, [images, seed], images.dtype,
                          stateful=False)
  out.set_shape(images.shape)
  return out


# ----------------------------------------------------------------------------
# Mixup.


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float,
          seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """`batch_augmentation.mixup` inside `tf.data`: images [B, H, W, C] and
  one-hot labels [B, K] mixed with Beta(alpha, alpha) weights, the random
  generator keyed by `seed` (int32/int64 [2])."""
  def apply(images, labels, seed):
    return batch_augmentation.mixup(images, labels, alpha,
                                    batch_augmentation.generator(seed))

  mixed_images, mixed_labels = tf.numpy_function(
      apply, [images, labels, seed], [images.dtype, labels.dtype],
      stateful=False)
  mixed_images.set_shape(images.shape)
  mixed_labels.set_shape(labels.shape)
  return mixed_images, mixed_labels


# ----------------------------------------------------------------------------
# ImageNet (on JPEG bytes: decode only the crop).


def imagenet_train_image(jpeg: tf.Tensor, seed: tf.Tensor,
                         image_size: int = IMAGENET_IMAGE_SIZE,
                         flip: bool = True) -> tf.Tensor:
  """Inception-style random-resized crop + flip of a JPEG.

  The crop covers 8%-100% of the image's area with an aspect ratio in
  [3/4, 4/3]; it is resized to `image_size` x `image_size` and flipped
  left-right with probability 1/2 when `flip`.

  Args:
    jpeg: scalar string, the JPEG bytes.
    seed: int32/int64 [2], for the stateless random ops.
    image_size: S, the output's height and width.
    flip: random horizontal flips.

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  box_seed, flip_seed = tf.unstack(_split_seed(seed, 2))
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
  image = resize_image(to_unit_range(image, 255.0), (image_size, image_size))
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def imagenet_eval_image(jpeg: tf.Tensor,
                        image_size: int = IMAGENET_IMAGE_SIZE) -> tf.Tensor:
  """The central crop (87.5% of the shorter side) of a JPEG, resized.

  Args:
    jpeg: scalar string, the JPEG bytes.
    image_size: S, the output's height and width (224: the same as resizing
      the shorter side to 256 and center-cropping 224).

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  shape = tf.image.extract_jpeg_shape(jpeg)
  height, width = shape[0], shape[1]
  crop = tf.cast(
      tf.round(IMAGENET_CENTER_CROP_FRACTION *
               tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
  crop = tf.maximum(crop, 1)
  window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop,
                     crop])
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  return resize_image(to_unit_range(image, 255.0), (image_size, image_size))
