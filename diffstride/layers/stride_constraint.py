"""The constraints that keep a learned stride in its range."""

from typing import Optional, Sequence

import keras
from keras import ops
import numpy as np

from diffstride import strides as strides_lib

_PACKAGE = 'diffstride'
F32_MAX = float(np.finfo(np.float32).max)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StrideConstraint(keras.constraints.Constraint):
  """Clips strides into [lower_limit, upper_limit] (defaults: [1, float32 max]).

  NaN (from a non-finite update) is mapped to the lower limit, so strides never
  leave the range whatever the optimizer does. Applied by the optimizer after
  every update and explicitly in the forward pass, as in the official
  implementation.

  Args:
    lower_limit: the smallest stride, or None (1).
    upper_limit: the largest stride, or None (float32 max).

  Example:

  >>> c = StrideConstraint(lower_limit=1.5, upper_limit=4.0)
  >>> keras.ops.convert_to_numpy(c(np.array([1.0, float('nan'), 9.0])))
  array([1.5, 1.5, 4. ], dtype=float32)
  """

  def __init__(self,
               lower_limit: Optional[float] = None,
               upper_limit: Optional[float] = None):
    # Only finiteness here: the order check below gives the clearer message.
    self.lower_limit = strides_lib.optional_limit(lower_limit, 'lower_limit',
                                                  False)
    self.upper_limit = strides_lib.optional_limit(upper_limit, 'upper_limit',
                                                  False)
    self.lower = 1.0 if self.lower_limit is None else self.lower_limit
    self.upper = F32_MAX if self.upper_limit is None else self.upper_limit
    if self.lower > self.upper:
      raise ValueError(
          f'`lower_limit` ({self.lower}) must not exceed `upper_limit` '
          f'({self.upper}).')

  def __call__(self, w):
    # A non-finite update (NaN or inf gradients) must not leave the range:
    # NaN goes to the lower limit, +-inf are clipped.
    w = ops.convert_to_tensor(w)  # The optimizer passes the variable.
    w = ops.where(ops.isnan(w), ops.cast(self.lower, w.dtype), w)
    return ops.clip(w, self.lower, self.upper)

  def get_config(self):
    return {'lower_limit': self.lower_limit, 'upper_limit': self.upper_limit}


@keras.saving.register_keras_serializable(package=_PACKAGE,
                                          name='_AxisFloorConstraint')
class AxisFloorConstraint(StrideConstraint):
  """`StrideConstraint` that also keeps each axis at or above N / (N - R).

  The official layer re-assigns the stride variable to N / (N - R) at every
  call; applying that floor in the optimizer's constraint reaches the same
  values without assigning inside `call`.

  Args:
    axis_floor: the floor of each entry of the stride weight, or None.
    lower_limit, upper_limit: as `StrideConstraint`.
  """

  def __init__(self, axis_floor: Optional[Sequence[float]] = None,
               lower_limit: Optional[float] = None,
               upper_limit: Optional[float] = None):
    super().__init__(lower_limit, upper_limit)
    self.axis_floor = None if axis_floor is None else list(axis_floor)

  def __call__(self, w):
    w = super().__call__(w)
    if self.axis_floor is None:
      return w
    floor = ops.convert_to_tensor(np.asarray(self.axis_floor, np.float32))
    return ops.clip(ops.maximum(w, ops.cast(floor, w.dtype)), self.lower,
                    self.upper)

  def get_config(self):
    config = super().get_config()
    config['axis_floor'] = self.axis_floor
    return config
