"""BlurPool: anti-aliased downsampling (Zhang, ICML 2019)."""

from typing import Optional

import keras

from diffstride import antialias
from diffstride import strides as strides_lib
from diffstride.layers import common

_PACKAGE = 'diffstride'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlurPool(keras.layers.Layer):
  """Binomial low-pass filter, then subsampling by an integer stride.

  "Making Convolutional Networks Shift-Invariant Again" (Zhang, ICML 2019),
  the algorithm of adobe/antialiased-cnns' `BlurPool`: pad each spatial axis
  by floor((f - 1) / 2) before and ceil((f - 1) / 2) after, filter every
  channel with the normalised outer product of the binomial coefficients of
  size f, keep rows and columns 0, s, 2s, ... (f = 1: subsampling only).
  No weights. In `diffstride.resnet`, a strided convolution becomes a
  convolution at stride 1, its BatchNorm and ReLU, then BlurPool; a max pool
  becomes a max pool at stride 1, then BlurPool.

  Args:
    strides: whole-number stride, a number or (height, width); >= 1.
    filter_size: f, 1 to 7 (4, adobe/antialiased-cnns' default).
    padding: 'reflect' (the reference's default), 'zero' or 'circular'.
    data_format: 'channels_last' or 'channels_first' (None: Keras' default).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W]; with 'reflect', H and
  W larger than the padding.
  Output: [B, ceil(H / s_h), ceil(W / s_w), C] (or channels_first), the
  input's dtype.

  Example:

  >>> BlurPool(strides=2, filter_size=3)(np.ones((1, 9, 9, 3), 'float32')).shape
  (1, 5, 5, 3)
  """

  def __init__(self,
               strides: strides_lib.Stride = 2,
               filter_size: int = 4,
               padding: str = 'reflect',
               data_format: Optional[str] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.strides = strides_lib.integer_strides(strides,
                                                     type(self).__name__)
    self.filter_size = antialias.check_filter_size(filter_size)
    self.padding = antialias.check_padding(padding)
    self.data_format = data_format or keras.config.image_data_format()
    self._channels_first = common.check_data_format(self.data_format)

  def build(self, input_shape):
    common.spatial_dims(input_shape, self._channels_first,
                        type(self).__name__)

  def call(self, inputs):
    return antialias.blur(inputs, self.filter_size, self.strides,
                          self.padding, self._channels_first)

  def compute_output_shape(self, input_shape):
    return common.subsampled_shape(input_shape, self.strides,
                                   self._channels_first, type(self).__name__)

  def get_config(self):
    config = super().get_config()
    config.update(strides=self.strides, filter_size=self.filter_size,
                  padding=self.padding, data_format=self.data_format)
    return config
