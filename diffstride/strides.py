"""Strides as numbers: the minimum DiffStride stride and (height, width) pairs.

Small helpers that the layers, the complexity penalty, the export and the
training logs share, so that each rule is written once:

    minimum_stride(32, 4.0)        # 32 / (32 - 4) = 1.1428572 (float32)
    stride_pair(2.0)               # (2.0, 2.0)
    stride_pair(layer.strides)     # a (1,) shared or (2,) DiffStride weight
"""

from typing import Tuple, Union

import numpy as np
import tensorflow as tf

Number = Union[float, int]


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
  if tf.is_tensor(size):
    n = tf.cast(size, tf.float32)
    return n / (n - smoothness_factor)
  n = np.float32(size)
  return n / (n - np.float32(smoothness_factor))


def stride_pair(strides) -> Tuple[float, float]:
  """(S_h, S_w) as Python floats from a stride in any of its forms.

  Args:
    strides: a number (both axes), or a sequence, array, tensor or variable
      holding one value (a shared stride, used for both axes) or two
      (height, width).

  Returns:
    (S_h, S_w).
  """
  if isinstance(strides, (int, float, np.number)):
    return float(strides), float(strides)
  values = [float(v) for v in np.asarray(strides).reshape(-1)]
  if len(values) == 1:
    return values[0], values[0]
  return values[0], values[1]


def stride_pair_tensor(strides) -> tf.Tensor:
  """float32[2] (S_h, S_w) from a (1,) shared or (2,) stride weight, keeping
  its gradient."""
  strides = tf.cast(tf.convert_to_tensor(strides), tf.float32)
  if strides.shape[0] == 1:
    strides = tf.concat([strides, strides], axis=0)
  return strides
