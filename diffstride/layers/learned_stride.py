"""What the layers with a learned stride share: arguments, weight, config."""

from typing import Optional

import keras
from keras import ops
import numpy as np

from diffstride import sized_layer
from diffstride import strides as strides_lib
from diffstride.layers import common
from diffstride.layers import stride_constraint


class LearnedStrideLayer(keras.layers.Layer, sized_layer.SizedLayer):
  """Base of `DiffStride` and `DiffStride1D`.

  Holds the arguments both take (see `DiffStride`), the `strides` weight
  (float32, constrained to its limits and to N / (N - R) per axis), and the
  host copy of it that gives the output sizes (`sized_layer.SizedLayer`).
  Subclasses define the sizes and the forward pass.
  """

  def __init__(self,
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = common.CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(trainable=trainable, **kwargs)
    self._smoothness = strides_lib.smoothness(smoothness_factor)
    self._cropping = bool(cropping)
    self._lower_limit, self._upper_limit = strides_lib.stride_limits(
        lower_limit_stride, upper_limit_stride)
    self._channels_first = common.check_data_format(data_format)
    self.data_format = data_format
    self.implementation = common.check_implementation(implementation)
    self.stride_constraint = stride_constraint.StrideConstraint(
        self._lower_limit, self._upper_limit)
    # Compiled (XLA, jax.jit) only once something keeps the static sizes
    # current: `diffstride.track_sizes(model)` sets it (`sized_layer`).
    self.supports_jit = False

  @property
  def smoothness_factor(self) -> float:
    return self._smoothness

  def _add_strides(self, init: np.ndarray, axis_floor):
    """Creates the `strides` weight at `init` with its constraint."""
    self.strides = self.add_weight(
        shape=init.shape,
        initializer=keras.initializers.Constant(init),
        trainable=True,
        dtype='float32',
        autocast=False,
        constraint=stride_constraint.AxisFloorConstraint(
            axis_floor, self._lower_limit, self._upper_limit),
        name='strides')
    self._set_host_strides(init)

  def load_own_variables(self, store):
    super().load_own_variables(store)
    self._refresh_from_variable()  # The loaded strides, not the config's.

  def _strides_tensor(self):
    return ops.cast(ops.convert_to_tensor(self.strides), 'float32')

  def get_config(self):
    config = super().get_config()
    config.update(
        smoothness_factor=self._smoothness,
        cropping=self._cropping,
        lower_limit_stride=self._lower_limit,
        upper_limit_stride=self._upper_limit,
        data_format=self.data_format,
        implementation=self.implementation)
    return config
