"""DiffStride1D: learnable-stride spectral pooling along one axis."""

from typing import Optional

import keras
from keras import ops
import numpy as np

from diffstride import crop
from diffstride import dft
from diffstride import masks
from diffstride import strides as strides_lib
from diffstride.layers import common
from diffstride.layers import learned_stride
from diffstride.layers import stride_constraint

_PACKAGE = 'diffstride'


def _host_kept_bins(length: int, stride, smoothness: float, cropping: bool,
                    lower: float = 1.0,
                    upper: float = stride_constraint.F32_MAX) -> int:
  """The number c of rFFT bins kept, in float32 as the layer's mask decides."""
  if length <= smoothness:
    raise ValueError(
        f'DiffStride1D input length {length} is too small for '
        f'smoothness_factor={smoothness}: the length must exceed the ramp '
        'length R.')
  if not cropping:
    return length // 2 + 1
  (s,) = masks.effective_strides([np.float32(stride)], (length,), smoothness,
                                 False, lower, upper, masks.HOST)
  t = masks.threshold(length, s, 1, masks.HOST)
  return len(masks.kept(t, smoothness, masks.column_positions(length)))


def diffstride1d_output_length(length: int, strides: strides_lib.Number,
                               smoothness_factor: float = 4.0,
                               cropping: bool = True) -> int:
  """The T' a DiffStride1D layer produces on T samples at `strides`.

  Computed in float32 as the layer does (and as `diffstride_output_size`
  computes the width), e.g. ``diffstride1d_output_length(64, 4.0) == 24``.
  """
  stride = strides_lib.single_stride(strides, 'DiffStride1D')
  if length <= smoothness_factor:
    raise ValueError(f'`length` ({length}) must exceed smoothness_factor '
                     f'({smoothness_factor}).')
  return 2 * (_host_kept_bins(length, stride, smoothness_factor, cropping) - 1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiffStride1D(learned_stride.LearnedStrideLayer):
  """Learnable-stride spectral pooling along one axis (DiffStride in 1-D).

  The rFFT of each channel times the mask ``clip((R + t - n) / R, 0, 1)``
  with ``t = max(T / S, 2) / 2 + 1`` over the bins n = 0 .. T // 2, cropped to
  the mask's support and inverted at length T' = 2 (c - 1) for the c kept
  bins: exactly what `DiffStride` does along its width. `layer.strides` is a
  float32 weight of shape (1,); a stride below T / (T - R) is raised to it
  (straight-through) and by the weight's constraint.

  Args:
    strides: initial stride, a number (or a sequence of one); >= 1.
    smoothness_factor, cropping, trainable, lower_limit_stride,
      upper_limit_stride, data_format: as `DiffStride`.
    implementation: 'matmul' (one real [T', T] operator), 'fft' (keras.ops
      rFFT / irFFT) or 'auto' (matmul up to 2048 samples).

  Input: [B, T, C] (channels_last) or [B, C, T] (channels_first, the
  default). Output: [B, T', C] or [B, C, T'], T' about T / S + 2R
  (`diffstride1d_output_length`); with `cropping=False`, T' = 2 (T // 2) and
  the masked bins are zeroed. Sizes as for `DiffStride` (`sized_layer`).

  Example:

  >>> layer = DiffStride1D(strides=4.0, data_format='channels_last')
  >>> layer(np.zeros((2, 64, 8), 'float32')).shape
  (2, 24, 8)
  """

  def __init__(self,
               strides: strides_lib.Number = 2.0,
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = common.CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(smoothness_factor, cropping, trainable,
                     lower_limit_stride, upper_limit_stride, data_format,
                     implementation, **kwargs)
    self._stride = strides_lib.single_stride(strides, 'DiffStride1D')

  def build(self, input_shape):
    (length,) = common.spatial_dims(input_shape, self._channels_first,
                                    type(self).__name__, rank=3)
    if length is not None and length <= self._smoothness:
      raise ValueError(
          f'DiffStride1D input length {length} is too small for '
          f'smoothness_factor={self._smoothness}: the length must exceed the '
          f'ramp length R (input shape {tuple(input_shape)}).')
    init = np.array([self._stride], np.float32)
    floor = None
    if length is not None:
      minimum = strides_lib.minimum_stride(length, self._smoothness)
      init = np.maximum(init, minimum)
      floor = [float(minimum)]
    self._add_strides(init, floor)
    if length is not None:
      self._record_dims((int(length),))

  # -- sizes (sized_layer.SizedLayer)

  def _resolve_sizes(self, dims, host_strides):
    return _host_kept_bins(dims[0], np.asarray(host_strides).reshape(-1)[0],
                           self._smoothness, self._cropping,
                           self.stride_constraint.lower,
                           self.stride_constraint.upper)

  def _sizes_summary(self, sizes):
    return (2 * (sizes - 1),)

  def _constants(self, dims, sizes) -> dft.CropConstants:
    return dft.axis_constants(dims[0], sizes, 2 * (sizes - 1))

  # -- the forward pass

  def _threshold(self, length, strides):
    (s,) = masks.effective_strides(
        strides, (length,), self._smoothness, False,
        self.stride_constraint.lower, self.stride_constraint.upper)
    return masks.threshold(length, s, 1)

  def mask(self, length: int):
    """float32[T // 2 + 1]: the mask over the rFFT bins of a length-T input,
    differentiable in the stride."""
    t = self._threshold(length, self._strides_tensor())
    return masks.mask(t, self._smoothness, masks.column_positions(length))

  def call(self, inputs):
    dims = common.spatial_dims_now(inputs, self._channels_first,
                                   type(self).__name__, rank=3)
    strides = self._strides_tensor()
    k, traced = self._crop_operands(dims, strides)
    t = self._threshold(dims[0], strides)
    mask = masks.mask(t, self._smoothness, k.col_positions)
    y = crop.axis_crop(ops.cast(inputs, 'float32'), mask, k,
                       self._channels_first,
                       common.use_fft(self.implementation, dims))
    if traced and self._cropping:
      num_bins = self._sizes_for(dims)
      y = self._stale_guard(
          y, [(t, masks.column_positions(dims[0]), num_bins)],
          self._sizes_summary(num_bins))
    return ops.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    common.spatial_dims(input_shape, self._channels_first,
                        type(self).__name__, rank=3)
    if self._channels_first:
      return (input_shape[0], input_shape[1], None)
    return (input_shape[0], None, input_shape[2])

  def get_config(self):
    config = super().get_config()
    config.update(strides=self._stride)
    return config
