"""Strides as numbers: validation, the minimum DiffStride stride, pairs.

Small helpers that the layers, the complexity penalty, the export and the
training logs share, so that each rule is written once:

    minimum_stride(32, 4.0)        # 32 / (32 - 4) = 1.1428572 (float32)
    stride_pair(2.0)               # (2.0, 2.0)
    stride_pair(layer.strides)     # a (1,) shared or (2,) DiffStride weight
    stride_pair_tensor(layer.strides)  # float32[2], differentiable

Backend-neutral: NumPy and `keras.ops` only.
"""

import math
import numbers
from typing import Optional, Tuple, Union

from keras import ops
import numpy as np

Number = Union[float, int]
Stride = Union[Number, Tuple[Number, Number]]


def is_number(value) -> bool:
  """A real number (Python or NumPy), not a bool."""
  return ((isinstance(value, numbers.Real) or isinstance(value, np.number))
          and not isinstance(value, (bool, np.bool_)))


def _checked_stride(value, given, name: str) -> float:
  if not is_number(value):
    raise ValueError(f'`{name}` must hold numbers, got {given!r}.')
  if not math.isfinite(float(value)):
    raise ValueError(f'`{name}` must be finite, got {given!r}.')
  if float(value) < 1.0:
    raise ValueError(
        f'`{name}` must be >= 1 (a stride below 1 would upsample), '
        f'got {given!r}.')
  return float(value)


def pair_of_strides(strides, name: str = 'strides') -> Tuple[float, float]:
  """Validates a stride or a (height, width) pair: numbers, finite, >= 1."""
  if is_number(strides):
    pair = (strides, strides)
  elif isinstance(strides, (tuple, list, np.ndarray)) and len(strides) == 2:
    pair = tuple(strides)
  else:
    raise ValueError(
        f'`{name}` must be a number or a pair of numbers (height, width), '
        f'got {strides!r}.')
  return tuple(_checked_stride(v, strides, name) for v in pair)


def integer_strides(strides, layer_name: str) -> Tuple[int, int]:
  """Validates whole-number strides, a number or (height, width), >= 1.

  For the layers that subsample on a grid (average pooling, BlurPool,
  polyphase pooling): a fractional stride raises a ValueError that names the
  layer and the layers that take one.
  """
  pair = pair_of_strides(strides)
  if any(not float(s).is_integer() for s in pair):
    raise ValueError(
        f'`strides` of {layer_name} must be whole numbers ({layer_name} '
        f'subsamples on a grid), got {strides!r}. Use DiffStride or '
        'FixedSpectralPooling for fractional strides.')
  return int(pair[0]), int(pair[1])


def single_stride(strides, layer_name: str) -> float:
  """Validates a number, or a sequence holding exactly one number, >= 1."""
  value = strides
  if isinstance(strides, (tuple, list, np.ndarray)):
    if len(strides) != 1:
      raise ValueError(f'`strides` of {layer_name} must be a number or a '
                       f'sequence of one number, got {strides!r}.')
    value = strides[0]
  if not is_number(value):
    raise ValueError(f'`strides` must be a number, got {strides!r}.')
  return _checked_stride(value, strides, 'strides')


def optional_limit(value, name: str,
                   at_least_one: bool = True) -> Optional[float]:
  """None, or a finite number (>= 1 unless `at_least_one` is False)."""
  if value is None:
    return None
  if not is_number(value) or not math.isfinite(float(value)):
    raise ValueError(f'`{name}` must be a finite number or None, got {value!r}.')
  if at_least_one and float(value) < 1.0:
    raise ValueError(f'`{name}` must be >= 1, got {value!r}.')
  return float(value)


def smoothness(value) -> float:
  """Validates a smoothness_factor R: a finite number > 0."""
  if not is_number(value) or not math.isfinite(float(value)) or value <= 0:
    raise ValueError(
        '`smoothness_factor` must be a finite number > 0 (the length R of '
        f'the mask ramp), got {value!r}.')
  return float(value)


def minimum_stride(size, smoothness_factor: float):
  """N / (N - R): the smallest stride DiffStride applies on N samples.

  Below it the mask's ramp of width R would reach past the highest frequency;
  the official layer raises its stride to this value, and so do ours.

  Args:
    size: N, the input length along one axis: a Python or NumPy number (the
      result is then a NumPy float32, computed in float32 as the official
      layer does) or a scalar tensor (the result is a float32 tensor).
    smoothness_factor: R.

  Returns:
    float32 N / (N - R).
  """
  if is_number(size):
    n = np.float32(size)
    return n / (n - np.float32(smoothness_factor))
  n = ops.cast(size, 'float32')
  return n / (n - smoothness_factor)


def stride_pair(strides) -> Tuple[float, float]:
  """(S_h, S_w) as Python floats from a stride in any of its forms.

  Args:
    strides: a number (both axes), or a sequence, array, tensor or variable
      holding one value (a shared stride, used for both axes) or two
      (height, width).

  Returns:
    (S_h, S_w).
  """
  if is_number(strides):
    return float(strides), float(strides)
  if not isinstance(strides, (list, tuple, np.ndarray)):
    strides = ops.convert_to_numpy(strides)
  values = [float(v) for v in np.asarray(strides).reshape(-1)]
  if len(values) == 1:
    return values[0], values[0]
  return values[0], values[1]


def stride_pair_tensor(strides):
  """float32[2] (S_h, S_w) from a (1,) shared or (2,) stride weight, keeping
  its gradient (any backend)."""
  strides = ops.cast(ops.convert_to_tensor(strides), 'float32')
  if strides.shape[0] == 1:
    strides = ops.concatenate([strides, strides], axis=0)
  return strides


def stride_limits(lower_limit, upper_limit) -> Tuple[Optional[float],
                                                      Optional[float]]:
  """Validates a layer's (lower_limit_stride, upper_limit_stride)."""
  lower = optional_limit(lower_limit, 'lower_limit_stride')
  upper = optional_limit(upper_limit, 'upper_limit_stride')
  if lower is not None and upper is not None and lower > upper:
    raise ValueError(f'`lower_limit_stride` ({lower}) must not exceed '
                     f'`upper_limit_stride` ({upper}).')
  return lower, upper
