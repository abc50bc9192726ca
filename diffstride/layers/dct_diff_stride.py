"""DCT-DiffStride: DiffStride on the orthonormal type-II DCT."""

from typing import Optional, Tuple

import keras
import numpy as np

from diffstride import crop
from diffstride import dct
from diffstride import masks
from diffstride import strides as strides_lib
from diffstride.layers import common
from diffstride.layers import diff_stride
from diffstride.layers import stride_constraint

_PACKAGE = 'diffstride'
IMPLEMENTATIONS = ('matmul',)


def dct_thresholds(dims, strides, numerics=masks.TENSOR):
  """(t_h, t_w) = max(N / S, 2) per axis, in DCT bins (`masks.threshold`
  with `full_band`): the box ends at frequency pi / S as DiffStride's."""
  return tuple(masks.threshold(n, s, 0, numerics, full_band=True)
               for n, s in zip(dims, strides))


def _host_sizes(dims, host_strides, smoothness: float, shared: bool,
                cropping: bool, lower: float = 1.0,
                upper: float = stride_constraint.F32_MAX,
                layer_name: str = 'DCTDiffStride') -> Tuple[int, int]:
  """(h', w'): the number of DCT bins 0, 1, ... where the mask is > 0 on
  each axis, at float32 strides, exactly as the layer's masks decide."""
  if not cropping:
    diff_stride.check_dims(dims, smoothness, layer_name)
    return tuple(int(n) for n in dims)
  thresholds = diff_stride.host_thresholds(
      dims, host_strides, smoothness, shared, dct_thresholds, layer_name,
      lower, upper)
  return tuple(len(masks.kept(t, smoothness, dct.positions(n)))
               for t, n in zip(thresholds, dims))


def dct_diffstride_output_size(height: int, width: int,
                               strides: strides_lib.Stride,
                               smoothness_factor: float = 4.0,
                               cropping: bool = True,
                               shared_stride: bool = False) -> Tuple[int, int]:
  """The (h', w') a DCTDiffStride layer produces on an (H, W) map.

  About N / S + R per axis (the bins n < max(N / S, 2) + R), computed in
  float32 exactly as the layer does, e.g.
  ``dct_diffstride_output_size(32, 32, 2) == (20, 20)`` and
  ``dct_diffstride_output_size(64, 64, (2, 4)) == (36, 20)``.
  """
  pair = strides_lib.pair_of_strides(strides)
  smoothness = strides_lib.smoothness(smoothness_factor)
  return _host_sizes((int(height), int(width)), pair, smoothness,
                     bool(shared_stride), bool(cropping))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DCTDiffStride(diff_stride.DiffStride):
  """DiffStride on the orthonormal type-II DCT (DCT-DiffStride).

  Per axis of N samples, takes the orthonormal DCT-II, multiplies DCT bin n
  (n = 0 .. N - 1, frequency pi n / N) by the mask
  ``clip((R + t - n) / R, 0, 1)`` with ``t = max(N / S, 2)`` (the box ends at
  frequency pi / S, as DiffStride's), keeps the M first bins (where the mask
  is > 0) and inverts with the orthonormal DCT-III of size M:
  ``y = C3_M diag(m) C2_{M x N} x`` on both spatial axes, as real matmuls
  (`diffstride.crop.dct_crop`). With no wrap-around there is no
  negative-frequency half: M is about N / S + R (DiffStride: N / S + 2R).

  Everything else is DiffStride's: S = `layer.strides` (float32 (2,), or (1,)
  with `shared_stride`) gets its gradient through the mask's ramp; strides
  below N / (N - R), where the ramp ends at the last bin, are raised to it
  (straight-through) and the weight's constraint keeps it there; output sizes
  come from the strides' value as for DiffStride (`diffstride.sized_layer`,
  `diffstride.track_sizes`); float32 maths whatever the compute dtype.

  Scale: both transforms are orthonormal, so the output has the energy of
  the masked band (a constant map c becomes c sqrt(H W / (h' w'))).

  Args:
    strides: initial stride, a number or (height, width); >= 1.
    smoothness_factor: R, the length of the mask's ramp in DCT bins (> 0).
    cropping: crop to the mask's support (False: keep the input size).
    trainable: learn the strides.
    shared_stride: one stride for both axes.
    lower_limit_stride, upper_limit_stride: the strides' range (None: 1 and
      float32 max).
    data_format: 'channels_first' (the default, as DiffStride) or
      'channels_last'.
    implementation: 'matmul' only (dense real DCT matrices; there is no
      FFT-based DCT path).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W]; H, W > R.
  Output: [B, h', w', C] or [B, C, h', w'] in the layer's compute dtype
  (`dct_diffstride_output_size`).

  Example:

  >>> layer = DCTDiffStride(strides=2.0, data_format='channels_last')
  >>> layer(np.zeros((8, 32, 32, 16), 'float32')).shape
  (8, 20, 20, 16)
  """

  _OPERANDS = dct.DCTConstants
  _OPERAND_RANKS = dct.RANKS
  _axis_thresholds = staticmethod(dct_thresholds)

  def __init__(self,
               strides: strides_lib.Stride = (2.0, 2.0),
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               shared_stride: bool = False,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = common.CHANNELS_FIRST,
               implementation: str = 'matmul',
               **kwargs):
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(
          f'`implementation` of DCTDiffStride must be one of '
          f'{IMPLEMENTATIONS} (there is no FFT-based DCT path), got '
          f'{implementation!r}.')
    super().__init__(strides, smoothness_factor, cropping, trainable,
                     shared_stride, lower_limit_stride, upper_limit_stride,
                     data_format, implementation, **kwargs)

  # -- sizes (sized_layer.SizedLayer)

  def _resolve_sizes(self, dims, host_strides):
    return _host_sizes(dims, host_strides, self._smoothness,
                       self._shared_stride, self._cropping,
                       self.stride_constraint.lower,
                       self.stride_constraint.upper, type(self).__name__)

  def _sizes_summary(self, sizes):
    return tuple(sizes)

  def _kept_counts(self, sizes):
    return tuple(sizes)

  def _constants(self, dims, sizes) -> dct.DCTConstants:
    return dct.crop_constants(int(dims[0]), int(dims[1]), int(sizes[0]),
                              int(sizes[1]))

  # -- the forward pass (DiffStride's `call` with these hooks)

  def _axis_positions(self, dims):
    return dct.positions(dims[0]), dct.positions(dims[1])

  def _crop(self, x, row_mask, col_mask, k, dims):
    del dims  # One implementation.
    return crop.dct_crop(x, row_mask, col_mask, k, self._channels_first)
