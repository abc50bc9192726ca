"""FixedSpectralPooling: spectral pooling at fixed strides (Rippel et al.)."""

from typing import Tuple

import keras
from keras import ops
import numpy as np

from diffstride import crop
from diffstride import dft
from diffstride import strides as strides_lib
from diffstride.layers import common

_PACKAGE = 'diffstride'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FixedSpectralPooling(keras.layers.Layer):
  """Spectral pooling at fixed, possibly fractional, strides (Rippel et al.).

  Keeps the lowest frequencies of the 2-D spectrum in a hard box and inverts:
  the crop of `DiffStride` with masks of ones and a size set by the strides.
  Output size: h' = max(floor(H / S_h) rounded down to even, 2),
  w' = max(floor(W / S_w), 2); e.g. 64x64 at strides (2, 4) gives 32x16.

  Args:
    strides: a number or (height, width); >= 1, fractions allowed.
    data_format: 'channels_first' (the official default) or 'channels_last'.
    implementation: 'matmul', 'fft' or 'auto' (matmul up to 320x320).

  Input: [B, H, W, C] or [B, C, H, W] per `data_format`, static H, W >= 2.
  Output: [B, h', w', C] or [B, C, h', w'].

  Example:

  >>> layer = FixedSpectralPooling((2, 4), data_format='channels_last')
  >>> layer(np.zeros((1, 64, 64, 3), 'float32')).shape
  (1, 32, 16, 3)
  """

  def __init__(self,
               strides: strides_lib.Stride = (2.0, 2.0),
               data_format: str = common.CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(**kwargs)
    self._channels_first = common.check_data_format(data_format)
    self.data_format = data_format
    self._strides = strides_lib.pair_of_strides(strides)
    self.implementation = common.check_implementation(implementation)
    self.supports_jit = True  # Output size is static: fine under XLA.

  def build(self, input_shape):
    dims = common.spatial_dims(input_shape, self._channels_first,
                               type(self).__name__)
    for name, size in zip(('height', 'width'), dims):
      if size is not None and size < 2:
        raise ValueError(f'{type(self).__name__} needs a {name} of at least 2,'
                         f' got input shape {tuple(input_shape)}.')
    self.strides = self.add_weight(
        shape=(2,),
        initializer=keras.initializers.Constant(self._strides),
        trainable=False,
        dtype='float32',
        autocast=False,
        name='strides')

  def _output_size(self, height: int, width: int) -> Tuple[int, int]:
    """Static (h', w'), computed in float32 as the official layer does."""
    s_h, s_w = (np.float32(s) for s in self._strides)
    out_h = int(np.floor(np.float32(height) / s_h))
    out_h -= out_h % 2
    out_w = int(np.floor(np.float32(width) / s_w))
    return max(out_h, 2), max(out_w, 2)

  def call(self, inputs):
    dims = common.spatial_dims(inputs.shape, self._channels_first,
                               type(self).__name__)
    if any(d is None for d in dims):
      raise ValueError(
          'FixedSpectralPooling needs static spatial dimensions, got shape '
          f'{tuple(inputs.shape)}.')
    height, width = (int(d) for d in dims)
    out_h, out_w = self._output_size(height, width)
    half = out_h // 2
    kept_rows = tuple(range(half)) + tuple(range(height - half, height))
    num_cols = min(out_w // 2 + 1, width // 2 + 1)
    k = crop.operands(dft.crop_constants(height, width, kept_rows, num_cols,
                                         out_w, ()))
    x = ops.cast(inputs, 'float32')
    row_mask, col_mask = ops.ones((out_h,)), ops.ones((num_cols,))
    if common.use_fft(self.implementation, (height, width)):
      y = crop.fft_spectral_crop(x, row_mask, col_mask, k,
                                 self._channels_first)
    else:
      y = crop.spectral_crop(x, row_mask, col_mask, k, self._channels_first,
                             custom_gradient=False)
    return ops.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    height, width = common.spatial_dims(input_shape, self._channels_first,
                                        type(self).__name__)
    out_h = out_w = None
    if height is not None and width is not None:
      out_h, out_w = self._output_size(height, width)
    if self._channels_first:
      return (input_shape[0], input_shape[1], out_h, out_w)
    return (input_shape[0], out_h, out_w, input_shape[3])

  def get_config(self):
    config = super().get_config()
    config.update(strides=self._strides, data_format=self.data_format,
                  implementation=self.implementation)
    return config
