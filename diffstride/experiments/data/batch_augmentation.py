"""The train-batch augmentation of small images, in NumPy, for every pipeline.

Written once: the NumPy batches of the in-memory sets (`array_batches`) call
these functions directly, and the `tf.data` pipelines through
`tf.numpy_function` (`augmentation.batch_pad_crop_flip`,
`augmentation.mixup`). Every random number comes from the
`numpy.random.Generator` passed in (`generator(key)`: a pure function of its
integer key), so a batch's augmentation is a pure function of its key.

  * `pad_crop_flip`: reflect-pad, random crop back, random horizontal flip of
    each image of a batch [B, H, W, C].
  * `mixup`: mixes every example of a batch with a random other one.
"""

from typing import Sequence, Tuple

import numpy as np


def generator(key: Sequence[int]) -> np.random.Generator:
  """A NumPy random generator that is a pure function of the integers
  `key` (any sign: taken modulo 2**64)."""
  entropy = [int(k) % (1 << 64) for k in np.asarray(key).reshape(-1)]
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator,
                  pad_crop: int = 4, flip: bool = True) -> np.ndarray:
  """Reflect-pads, random-crops back and random-flips every image of a batch.

  Each image of `images` [B, H, W, C] is reflect-padded by `pad_crop` pixels
  on each side (mirror padding without repeating the edge, as TensorFlow's
  'REFLECT'; not zeros: black borders would add artificial high
  frequencies), cropped back to H x W at its own random offset, and flipped
  left-right with probability 1/2 when `flip`. Returns [B, H, W, C], the
  dtype of `images`.
  """
  images = np.asarray(images)
  batch, height, width = images.shape[:3]
  offsets = rng.integers(0, 2 * pad_crop + 1, size=(batch, 2))
  flips = rng.random(batch) < 0.5
  if pad_crop:
    padded = np.pad(images, [(0, 0), (pad_crop, pad_crop),
                             (pad_crop, pad_crop), (0, 0)], mode='reflect')
    rows = offsets[:, :1] + np.arange(height)[None, :]  # [B, H]
    cols = offsets[:, 1:] + np.arange(width)[None, :]  # [B, W]
    images = padded[np.arange(batch)[:, None, None], rows[:, :, None],
                    cols[:, None, :]]
  if flip:
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return np.ascontiguousarray(images)


def mixup(images: np.ndarray, labels: np.ndarray, alpha: float,
          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Mixes each example of a batch with a random partner of the same batch.

  `out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]` for images and labels,
  with lam[i] ~ Beta(alpha, alpha) and perm a random permutation.

  Args:
    images: [B, H, W, C] float.
    labels: [B, K] float (one-hot).
    alpha: the Beta distribution's parameter (> 0).
    rng: the random generator.

  Returns:
    (images [B, H, W, C], labels [B, K]), mixed, in their dtypes.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  batch = images.shape[0]
  g1 = rng.gamma(alpha, size=batch)
  g2 = rng.gamma(alpha, size=batch)
  total = g1 + g2
  lam = np.where(total > 0, g1 / np.where(total > 0, total, 1.0), 1.0)
  perm = rng.permutation(batch)
  lam_images = lam.reshape(-1, 1, 1, 1).astype(images.dtype)
  lam_labels = lam.reshape(-1, 1).astype(labels.dtype)
  images = lam_images * images + (1 - lam_images) * images[perm]
  labels = lam_labels * labels + (1 - lam_labels) * labels[perm]
  return images, labels
