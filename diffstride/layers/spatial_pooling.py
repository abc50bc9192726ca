"""SpatialPooling: average pooling with 'same' padding, the strided-pooling
baseline."""

from typing import Optional, Tuple, Union

import keras

from diffstride import strides as strides_lib
from diffstride.layers import common

_PACKAGE = 'diffstride'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialPooling(keras.layers.AveragePooling2D):
  """Average pooling with 'same' padding; the strided-pooling baseline.

  Args:
    pool_size: window size, an int or (height, width).
    strides: whole-number strides, a number or (height, width).
    data_format: 'channels_last' or 'channels_first' (None: Keras' default).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W]. Output: spatial size
  ceil(H / stride_h) x ceil(W / stride_w).

  Example:

  >>> SpatialPooling(strides=2)(np.zeros((1, 9, 9, 3), 'float32')).shape
  (1, 5, 5, 3)
  """

  def __init__(self,
               pool_size: Union[int, Tuple[int, int]] = (1, 1),
               strides: strides_lib.Stride = (2, 2),
               data_format: Optional[str] = None,
               **kwargs):
    kwargs.pop('padding', None)
    if data_format is not None:
      common.check_data_format(data_format)
    pair = strides_lib.integer_strides(strides, type(self).__name__)
    super().__init__(pool_size=pool_size, strides=pair,
                     padding='same', data_format=data_format, **kwargs)
