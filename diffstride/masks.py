"""DiffStride's mask along one axis: each formula written once.

Along an axis of N samples at stride S (R = smoothness_factor):

    S_eff = constrain(raise_to(S, N / (N - R)))       effective stride
    t     = max(N / S_eff, 2) / 2 + offset             mask threshold
    m(n)  = clip((R + t - n) / R, 0, 1)                mask at position n

with offset 0 on the rows of a 2-D map (positions: the official layout of
|frequency|, `row_positions`) and 1 on rFFT columns and 1-D axes (positions
0 .. N // 2, `column_positions`). The kept frequencies are the positions
where m > 0; the output length is their number h' (rows) or 2 (c - 1) for c
kept rFFT columns.

The same formulas run in two numerics, in the same float32 order of
operations so that they agree bit for bit:

  * `HOST` (NumPy float32): the kept frequencies, hence the output sizes,
    computed on the host from the strides' value (`diffstride.sizes`);
  * `TENSOR` (`keras.ops`): the mask values in the computation, differentiable
    in the stride with the official layer's conventions (the gradient of
    `tf.clip_by_value` and `tf.maximum`, the straight-through raise).
"""

import math
from typing import Sequence, Tuple

from keras import ops
import numpy as np

from diffstride import strides as strides_lib

_F32_MAX = float(np.finfo(np.float32).max)


class _HostNumerics:
  """NumPy float32 scalars."""

  @staticmethod
  def f32(value):
    return np.float32(value)

  @staticmethod
  def at_least(value, floor):
    return np.maximum(value, np.float32(floor))

  @staticmethod
  def raise_to(value, minimum):
    # NaN stays NaN, +inf becomes NaN, as in the tensor version.
    with np.errstate(invalid='ignore'):
      return np.float32(value + (np.maximum(value, minimum) - value))

  @staticmethod
  def constrain(value, lower: float, upper: float):
    if np.isnan(value):
      value = np.float32(lower)
    return np.float32(np.clip(value, np.float32(lower), np.float32(upper)))

  @staticmethod
  def maximum(a, b):
    return np.maximum(a, b)


class _TensorNumerics:
  """`keras.ops` tensors, with the official layer's gradient conventions."""

  @staticmethod
  def f32(value):
    return ops.cast(value, 'float32')

  @staticmethod
  def at_least(value, floor):
    """max(value, floor), gradient to `value` where value >= floor (the
    convention of `tf.maximum(value, floor)`)."""
    return ops.where(ops.stop_gradient(ops.greater_equal(value, floor)), value,
                     ops.stop_gradient(ops.zeros_like(value) + floor))

  @staticmethod
  def raise_to(value, minimum):
    """Straight-through max(value, minimum): the value is raised, the
    gradient flows unchanged."""
    return value + ops.stop_gradient(ops.maximum(value, minimum) - value)

  @staticmethod
  def constrain(value, lower: float, upper: float):
    """`StrideConstraint` in the forward pass: NaN -> lower, then clipped."""
    value = ops.where(ops.isnan(value), lower, value)
    return clip(value, lower, upper)

  @staticmethod
  def maximum(a, b):
    return ops.maximum(a, b)


HOST = _HostNumerics()
TENSOR = _TensorNumerics()


def clip(value, low, high):
  """clip(value, low, high) whose gradient is 1 on the CLOSED interval
  [low, high] and 0 outside, as `tf.clip_by_value` (JAX's clip would give 1/2
  at the bounds, PyTorch's 1)."""
  inside = ops.logical_and(ops.greater_equal(value, low),
                           ops.less_equal(value, high))
  return ops.where(ops.stop_gradient(inside), value,
                   ops.stop_gradient(ops.clip(value, low, high)))


def effective_strides(strides: Sequence, sizes: Sequence, smoothness: float,
                      shared: bool, lower: float = 1.0,
                      upper: float = _F32_MAX, numerics=TENSOR) -> Tuple:
  """The strides the mask uses, one per axis.

  Args:
    strides: one stride per axis, or one shared by all axes (`shared`).
    sizes: N per axis (numbers; tensors with `TENSOR` on dynamic shapes).
    smoothness: R.
    shared: one stride for every axis, raised to the largest minimum.
    lower, upper: the stride constraint's limits.
    numerics: `HOST` or `TENSOR`.

  Returns:
    A tuple of float32 effective strides, one per axis.
  """
  minima = [strides_lib.minimum_stride(n, smoothness) for n in sizes]
  if shared:
    floor = minima[0]
    for m in minima[1:]:
      floor = numerics.maximum(floor, m)
    value = numerics.constrain(numerics.raise_to(strides[0], floor), lower,
                               upper)
    return tuple(value for _ in sizes)
  return tuple(
      numerics.constrain(numerics.raise_to(strides[i], m), lower, upper)
      for i, m in enumerate(minima))


def threshold(size, stride, offset: float, numerics=TENSOR,
              full_band: bool = False):
  """t = max(N / S, 2) / 2 + offset, in float32 (offset 0: rows, 1: rFFT
  columns and 1-D axes).

  With `full_band` (DCT bins, whose N positions cover [0, pi] where the DFT's
  N / 2 + 1 do): t = max(N / S, 2), the same frequency pi / S in DCT bins."""
  two = numerics.f32(2.0)
  value = numerics.at_least(numerics.f32(size) / stride, 2.0)
  if not full_band:
    value = value / two
  return value + numerics.f32(1.0) if offset else value


def ramp_values(t, smoothness: float, positions, numerics=TENSOR):
  """(R + t - n) / R at `positions` n, in the official order of operations."""
  if numerics is HOST:
    r = np.float32(smoothness)
    return np.float32(1.0 / float(smoothness)) * ((r + t) - positions)
  positions = ops.cast(positions, 'float32')
  return (1.0 / smoothness) * ((smoothness + t) - positions)


def mask(t, smoothness: float, positions):
  """clip((R + t - n) / R, 0, 1) at `positions` (float32[K]), differentiable
  in t with the official convention."""
  return clip(ramp_values(t, smoothness, positions), 0.0, 1.0)


def row_positions(height: int) -> np.ndarray:
  """Position of each row of an rFFT2D in the mask, as the official layer
  lays them out.

  The official code builds ``[n-1, ..., 1, 0, 0, 1, ..., n-1]`` (odd sizes
  drop one end) and fftshifts it. For even H this is |frequency| for rows
  0..H/2 and |frequency| - 1 for negative frequencies; it is kept bit for bit
  so that outputs and output sizes equal the official ones.

  Returns:
    np.ndarray<float32>[H].
  """
  half = np.arange(height // 2 + height % 2, dtype=np.float32)
  layout = np.concatenate([half[height % 2:][::-1], half])
  return np.fft.fftshift(layout).astype(np.float32)


def column_positions(length: int) -> np.ndarray:
  """Positions 0 .. N // 2 of the rFFT bins of a length-N axis: float32."""
  return np.arange(length // 2 + 1, dtype=np.float32)


def kept(t, smoothness: float, positions: np.ndarray) -> Tuple[int, ...]:
  """Indices of `positions` where the float32 mask at threshold t (a host
  float32) is > 0: the frequencies the crop keeps, in order."""
  values = ramp_values(t, smoothness, positions, numerics=HOST)
  return tuple(int(i) for i in np.nonzero(values > 0)[0])


def ramp_superset(num_kept: int, smoothness: float,
                  cropping: bool) -> Tuple[int, ...]:
  """The kept rFFT columns whose mask value may depend on the stride.

  With cropping, the kept columns are n < R + t and the ramp is t <= n <= R + t,
  so only n > c - 1 - R can be on it; a margin of one column covers float32
  rounding. Without cropping the ramp may be anywhere.
  """
  if not cropping:
    return tuple(range(num_kept))
  first = max(0, num_kept - 2 - int(math.ceil(smoothness)))
  return tuple(range(first, num_kept))
