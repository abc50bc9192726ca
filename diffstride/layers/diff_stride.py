"""DiffStride: spectral pooling with a learned stride (Riad et al., ICLR 2022)."""

from typing import Optional, Tuple

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


def check_dims(dims, smoothness: float, layer_name: str):
  """Raises unless each spatial size of `dims` exceeds the ramp length R."""
  for name, size in zip(('height', 'width'), dims):
    if size <= smoothness:
      raise ValueError(
          f'{layer_name} input {name} {size} is too small for '
          f'smoothness_factor={smoothness}: the spatial size must exceed the '
          'ramp length R. Lower smoothness_factor or downsample less before '
          f'this layer (input spatial size {tuple(dims)}).')


def dft_thresholds(dims, strides, numerics=masks.TENSOR):
  """(t_h, t_w) of DiffStride's masks at effective strides (S_h, S_w):
  row positions (offset 0) and rFFT columns (offset 1)."""
  return (masks.threshold(dims[0], strides[0], 0, numerics),
          masks.threshold(dims[1], strides[1], 1, numerics))


def host_thresholds(dims, host_strides, smoothness: float, shared: bool,
                    axis_thresholds, layer_name: str = 'DiffStride',
                    lower: float = 1.0,
                    upper: float = stride_constraint.F32_MAX):
  """The thresholds (host float32) of an (H, W) map at float32 strides,
  exactly as the layer's masks compute them; `axis_thresholds` is the
  transform's (`dft_thresholds` or DCT-DiffStride's)."""
  check_dims(dims, smoothness, layer_name)
  values = np.asarray(host_strides, np.float32).reshape(-1)
  effective = masks.effective_strides(values[:1] if shared else values, dims,
                                      smoothness, shared, lower, upper,
                                      masks.HOST)
  return axis_thresholds(dims, effective, masks.HOST)


def _host_kept(dims, host_strides, smoothness: float, shared: bool,
               cropping: bool, lower: float = 1.0,
               upper: float = stride_constraint.F32_MAX):
  """(kept rFFT rows in order, number of kept rFFT columns) of an (H, W) map
  at float32 strides, exactly as the layer's masks decide them."""
  height, width = dims
  if not cropping:
    check_dims(dims, smoothness, 'DiffStride')
    return tuple(range(height)), width // 2 + 1
  t_h, t_w = host_thresholds(dims, host_strides, smoothness, shared,
                             dft_thresholds, 'DiffStride', lower, upper)
  return (masks.kept(t_h, smoothness, masks.row_positions(height)),
          len(masks.kept(t_w, smoothness, masks.column_positions(width))))


def diffstride_output_size(height: int, width: int,
                           strides: strides_lib.Stride,
                           smoothness_factor: float = 4.0,
                           cropping: bool = True,
                           shared_stride: bool = False) -> Tuple[int, int]:
  """The (h', w') a DiffStride layer produces on an (H, W) map at `strides`.

  Computed in float32 exactly as the layer does, e.g.
  ``diffstride_output_size(64, 64, (2, 4)) == (40, 24)`` and
  ``diffstride_output_size(32, 32, 2) == (24, 24)``.
  """
  pair = strides_lib.pair_of_strides(strides)
  for name, size in (('height', height), ('width', width)):
    if size <= smoothness_factor:
      raise ValueError(f'`{name}` ({size}) must exceed smoothness_factor '
                       f'({smoothness_factor}).')
  rows, cols = _host_kept((height, width), pair, smoothness_factor,
                          shared_stride, cropping)
  return len(rows), 2 * (cols - 1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiffStride(learned_stride.LearnedStrideLayer):
  """Learnable-stride spectral pooling (DiffStride, Riad et al., ICLR 2022).

  Multiplies the rFFT2D of the input by a separable adaptive-span mask
  ``clip((R + t - n) / R, 0, 1)`` with ``t_h = max(H / S_h, 2) / 2`` over row
  positions and ``t_w = max(W / S_w, 2) / 2 + 1`` over rFFT columns, crops to
  the mask's support and inverts. S = `layer.strides` (a float32 weight of
  shape (2,), or (1,) with `shared_stride`) gets its gradient through the
  ramp. Strides below N / (N - R) are raised to it (straight-through: the
  gradient still flows) and the weight's constraint keeps it there after each
  optimizer step, as the official layer does.

  The output size depends on the stride's current value: 64x64 at strides
  (2, 4) gives 40x24 (about H / S + 2R; `diffstride_output_size`). In
  TensorFlow graphs without XLA it is found when the graph runs; elsewhere it
  is static, from the strides' value, and kept current in compiled training
  by `diffstride.track_sizes(model)` (see `diffstride.sized_layer`). The maths
  runs in float32 whatever the compute dtype.

  Args:
    strides: initial stride, a number or (height, width); >= 1.
    smoothness_factor: R, the length of the mask's ramp (> 0).
    cropping: crop to the mask's support (False: keep the input size).
    trainable: learn the strides.
    shared_stride: one stride for both axes.
    lower_limit_stride, upper_limit_stride: the strides' range (None: 1 and
      float32 max).
    data_format: 'channels_first' (the official default) or 'channels_last'.
    implementation: 'matmul' (two real matmuls, hand-written gradient),
      'fft' (keras.ops FFTs, for large maps) or 'auto' (matmul up to 320x320
      samples per map).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W]; H, W > R.
  Output: [B, h', w', C] or [B, C, h', w'] in the layer's compute dtype.

  Example:

  >>> layer = DiffStride(strides=2.0, data_format='channels_last')
  >>> layer(np.zeros((8, 32, 32, 16), 'float32')).shape
  (8, 24, 24, 16)
  """

  def __init__(self,
               strides: strides_lib.Stride = (2.0, 2.0),
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               shared_stride: bool = False,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = common.CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(smoothness_factor, cropping, trainable,
                     lower_limit_stride, upper_limit_stride, data_format,
                     implementation, **kwargs)
    self._strides = strides_lib.pair_of_strides(strides)
    if shared_stride and self._strides[0] != self._strides[1]:
      raise ValueError(
          '`shared_stride=True` requires equal initial strides for height and '
          f'width, got strides={strides!r}.')
    self._shared_stride = bool(shared_stride)

  @property
  def shared_stride(self) -> bool:
    return self._shared_stride

  def build(self, input_shape):
    dims = common.spatial_dims(input_shape, self._channels_first,
                               type(self).__name__)
    init = np.array(self._strides[:1] if self._shared_stride else self._strides,
                    dtype=np.float32)
    axis_floor = None
    if all(d is not None for d in dims):
      check_dims(dims, self._smoothness, type(self).__name__)
      # Start where the official layer is after its first call, and let the
      # optimizer's constraint keep the weight at or above N / (N - R).
      min_h, min_w = (strides_lib.minimum_stride(n, self._smoothness)
                      for n in dims)
      axis_floor = ([max(min_h, min_w)] if self._shared_stride
                    else [min_h, min_w])
      init = np.maximum(init, np.array(axis_floor, np.float32))
      axis_floor = [float(v) for v in axis_floor]
    self._add_strides(init, axis_floor)
    if all(d is not None for d in dims):
      self._record_dims(tuple(int(d) for d in dims))

  # -- sizes (sized_layer.SizedLayer)

  def _resolve_sizes(self, dims, host_strides):
    return _host_kept(dims, host_strides, self._smoothness,
                      self._shared_stride, self._cropping,
                      self.stride_constraint.lower,
                      self.stride_constraint.upper)

  def _sizes_summary(self, sizes):
    kept_rows, num_cols = sizes
    return len(kept_rows), 2 * (num_cols - 1)

  def _constants(self, dims, sizes) -> dft.CropConstants:
    kept_rows, num_cols = sizes
    return dft.crop_constants(
        dims[0], dims[1], tuple(kept_rows), num_cols, 2 * (num_cols - 1),
        masks.ramp_superset(num_cols, self._smoothness, self._cropping))

  def _kept_counts(self, sizes):
    """The number of kept frequencies per axis, for the stale guard."""
    kept_rows, num_cols = sizes
    return len(kept_rows), num_cols

  def output_size_at(self, dims, strides) -> Tuple[int, int]:
    """The (h', w') this layer gives on an (H, W) input at `strides` (a number
    or (S_h, S_w); not necessarily its own), as its forward computes it."""
    pair = np.asarray(strides_lib.stride_pair(strides), np.float32)
    return self._sizes_summary(self._resolve_sizes(
        tuple(int(d) for d in dims), pair))

  # -- the forward pass: the transform's hooks, then `call`

  _axis_thresholds = staticmethod(dft_thresholds)

  def _axis_positions(self, dims):
    """The mask positions of every frequency of each axis (np float32)."""
    return masks.row_positions(dims[0]), masks.column_positions(dims[1])

  def _crop(self, x, row_mask, col_mask, k, dims):
    if common.use_fft(self.implementation, dims):
      return crop.fft_spectral_crop(x, row_mask, col_mask, k,
                                    self._channels_first)
    return crop.spectral_crop(x, row_mask, col_mask, k, self._channels_first)

  def _thresholds(self, dims, strides):
    """(t_h, t_w): float32 tensors, differentiable in the strides."""
    effective = masks.effective_strides(
        strides, dims, self._smoothness, self._shared_stride,
        self.stride_constraint.lower, self.stride_constraint.upper)
    return self._axis_thresholds(dims, effective)

  def masks(self, height: int, width: int):
    """Full row and column masks for an (H, W) input.

    Returns:
      (row_mask, col_mask), float32 over every frequency of each axis
      (DiffStride: [H] rows and [W // 2 + 1] rFFT columns), differentiable
      in the strides.
    """
    dims = (height, width)
    thresholds = self._thresholds(dims, self._strides_tensor())
    return tuple(masks.mask(t, self._smoothness, p) for t, p
                 in zip(thresholds, self._axis_positions(dims)))

  def call(self, inputs):
    dims = common.spatial_dims_now(inputs, self._channels_first,
                                   type(self).__name__)
    strides = self._strides_tensor()
    k, traced = self._crop_operands(dims, strides)
    t_h, t_w = self._thresholds(dims, strides)
    row_mask = masks.mask(t_h, self._smoothness, k.row_positions)
    col_mask = masks.mask(t_w, self._smoothness, k.col_positions)
    y = self._crop(ops.cast(inputs, 'float32'), row_mask, col_mask, k, dims)
    if traced and self._cropping:
      sizes = self._sizes_for(dims)
      y = self._stale_guard(
          y, list(zip((t_h, t_w), self._axis_positions(dims),
                      self._kept_counts(sizes))),
          self._sizes_summary(sizes))
    return ops.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    common.spatial_dims(input_shape, self._channels_first,
                        type(self).__name__)
    if self._channels_first:
      return (input_shape[0], input_shape[1], None, None)
    return (input_shape[0], None, None, input_shape[3])

  def get_config(self):
    config = super().get_config()
    config.update(
        strides=self._strides,
        shared_stride=self._shared_stride,
        stride_constraint=keras.constraints.serialize(self.stride_constraint))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config.pop('stride_constraint', None)  # Rebuilt from the limits.
    return cls(**config)


# The official name of DiffStride.
LearnableSpectralPooling = DiffStride
