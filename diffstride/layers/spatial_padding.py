"""SpatialPadding: zero, reflect or circular padding of a map's two spatial
axes (the networks' circular padding for shift-invariant models)."""

from typing import Optional

import keras

from diffstride import antialias
from diffstride.layers import common

_PACKAGE = 'diffstride'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialPadding(keras.layers.Layer):
  """Pads rows and columns by `amount` on each side.

  Args:
    amount: rows and columns added before and after each spatial axis (>= 0).
    mode: 'zero', 'reflect' or 'circular' (wrap around).
    data_format: 'channels_last' or 'channels_first' (None: Keras' default).

  Input: [B, H, W, C] (or [B, C, H, W]); output [B, H + 2 amount,
  W + 2 amount, C] (or channels_first).

  Example:

  >>> SpatialPadding(1, 'circular')(np.zeros((1, 4, 4, 2), 'float32')).shape
  (1, 6, 6, 2)
  """

  def __init__(self, amount: int = 1, mode: str = 'circular',
               data_format: Optional[str] = None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
      raise ValueError(f'`amount` must be an integer >= 0, got {amount!r}.')
    self.amount = amount
    self.mode = antialias.check_padding(mode)
    self.data_format = data_format or keras.config.image_data_format()
    self._channels_first = common.check_data_format(self.data_format)

  def call(self, inputs):
    pad = (self.amount, self.amount)
    return antialias.pad_spatial(inputs, (pad, pad), self.mode,
                                 self._channels_first)

  def compute_output_shape(self, input_shape):
    dims = common.spatial_dims(input_shape, self._channels_first,
                               type(self).__name__)
    out = tuple(None if d is None else d + 2 * self.amount for d in dims)
    if self._channels_first:
      return (input_shape[0], input_shape[1]) + out
    return (input_shape[0],) + out + (input_shape[3],)

  def get_config(self):
    config = super().get_config()
    config.update(amount=self.amount, mode=self.mode,
                  data_format=self.data_format)
    return config
