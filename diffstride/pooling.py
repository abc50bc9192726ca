"""Pooling layers: spectral or spatial, with learnable strides or not.

`DiffStride` (Riad et al., ICLR 2022) downsamples a feature map by cropping its
2-D Fourier spectrum with a separable soft box mask whose size is set by a
stride learned by gradient descent. `FixedSpectralPooling` (Rippel et al., 2015)
crops with a hard box at fixed (fractional) strides; `SpatialPooling` is average
pooling with 'same' padding.

The layers take the constructor arguments of the official implementation
(google-research/diffstride) and give the same outputs, input gradients and
stride gradients; see `tests/reference_test.py`. They are implemented as two
real matmuls per layer with a hand-made gradient (see `diffstride.spectral`)
rather than FFTs, which makes them several times faster on CPU and free of
transposes in either data format.

Backends. On TensorFlow outside XLA (eager, `tf.function`) DiffStride finds
its output size in the graph (`diffstride.spectral`, data-dependent shapes).
Under XLA, on JAX and on PyTorch it uses `diffstride.backend_ops`: the same
operator with static shapes, the output size being Python integers resolved
on the host from the strides' values (`diffstride.sizes`, which also keeps
them current in compiled training: see `track_sizes`).
"""

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from diffstride import backend_ops
from diffstride import sizes as sizes_lib
from diffstride import spectral
from diffstride.strides import minimum_stride

Number = Union[float, int]
Stride = Union[Number, Tuple[Number, Number]]
CHANNELS_FIRST = 'channels_first'
CHANNELS_LAST = 'channels_last'
_DATA_FORMATS = (CHANNELS_FIRST, CHANNELS_LAST)
_IMPLEMENTATIONS = ('auto', 'matmul', 'fft')
# Above this many input pixels per map, 'auto' uses the FFT path: the dense
# operators cost O(H W (h' + w')) per map against O(H W log(H W)) for FFTs.
# Measured on CPU (forward + backward, channels_last, strides 2): matmul is
# 2.8x faster than the FFT path on 56x56 maps, 2.4x on 112x112, 1.7x on
# 224x224 and about even on 320x320.
_MATMUL_MAX_PIXELS = 320 * 320
_PACKAGE = 'diffstride'


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _pair_of_strides(strides, name: str = 'strides') -> Tuple[float, float]:
  """Validates a stride or pair of strides: numbers, finite, >= 1."""
  if _is_number(strides):
    pair = (strides, strides)
  elif isinstance(strides, (tuple, list, np.ndarray)) and len(strides) == 2:
    pair = tuple(strides)
  else:
    raise ValueError(
        f'`{name}` must be a number or a pair of numbers (height, width), '
        f'got {strides!r}.')
  for value in pair:
    if not _is_number(value) and not isinstance(value, np.number):
      raise ValueError(f'`{name}` must hold numbers, got {strides!r}.')
    if not math.isfinite(float(value)):
      raise ValueError(f'`{name}` must be finite, got {strides!r}.')
    if float(value) < 1.0:
      raise ValueError(
          f'`{name}` must be >= 1 (a stride below 1 would upsample), '
          f'got {strides!r}.')
  return float(pair[0]), float(pair[1])


def _check_data_format(data_format: str) -> bool:
  """Returns True for channels_first; raises on anything unknown."""
  if data_format not in _DATA_FORMATS:
    raise ValueError(
        f'`data_format` must be one of {_DATA_FORMATS}, got {data_format!r}.')
  return data_format == CHANNELS_FIRST


def _check_optional_limit(value, name: str,
                          at_least_one: bool = True) -> Optional[float]:
  if value is None:
    return None
  if not _is_number(value) or not math.isfinite(float(value)):
    raise ValueError(f'`{name}` must be a finite number or None, got {value!r}.')
  if at_least_one and float(value) < 1.0:
    raise ValueError(f'`{name}` must be >= 1, got {value!r}.')
  return float(value)


def _spatial_dims(input_shape, channels_first: bool, layer_name: str):
  """(height, width) of a rank-4 input shape; None where unknown."""
  shape = tuple(input_shape)
  if len(shape) != 4:
    raise ValueError(
        f'{layer_name} expects a rank-4 input (batch, height, width, channels)'
        f' or (batch, channels, height, width), got shape {shape} '
        f'(rank {len(shape)}).')
  return (shape[2], shape[3]) if channels_first else (shape[1], shape[2])


def _dynamic_spatial_dims(x: tf.Tensor, channels_first: bool):
  """(H, W) as python ints where static, else scalar int32 tensors."""
  static = x.shape[2:4] if channels_first else x.shape[1:3]
  dynamic = tf.shape(x)
  offset = 2 if channels_first else 1
  return tuple(
      int(static[i]) if static[i] is not None else dynamic[offset + i]
      for i in range(2))


def _use_matmul(implementation: str, height, width) -> bool:
  if implementation != 'auto':
    return implementation == 'matmul'
  if isinstance(height, int) and isinstance(width, int):
    return height * width <= _MATMUL_MAX_PIXELS
  return True


def _spectral_crop(x, kept_rows, row_mask, col_mask, in_size, out_size,
                   channels_first: bool, implementation: str,
                   row_has_grad=None, col_has_grad=None):
  """Dispatches to the matmul or the FFT path; float32 in and out.

  With `row_has_grad` / `col_has_grad` (bool[h'] / bool[c]: where the masks
  depend on the strides), the matmul path uses `spectral.spectral_crop` and
  its hand-made gradient; without them (fixed masks) the plain operator, whose
  shapes are static when the crop is (FixedSpectralPooling: XLA-friendly).
  """
  height, width = in_size
  out_height, out_width = out_size
  if _use_matmul(implementation, height, width):
    if row_has_grad is not None:
      return spectral.spectral_crop(x, kept_rows, row_mask, row_has_grad,
                                    col_mask, col_has_grad, out_width,
                                    channels_first)
    a_re, a_im = spectral.row_operator(kept_rows, row_mask, height)
    b_re, b_im = spectral.column_operator(col_mask, width, out_width)
    rows, cols = spectral.separable_matrices(a_re, a_im, b_re, b_im)
    return spectral.apply_separable(x, rows, cols, channels_first)
  return spectral.fft_spectral_crop(x, kept_rows, row_mask, col_mask,
                                    out_height, out_width, channels_first)


def _set_static_channels(y: tf.Tensor, x: tf.Tensor, channels_first: bool):
  batch = x.shape[0]
  chans = x.shape[1] if channels_first else x.shape[3]
  y.set_shape([batch, chans, None, None] if channels_first
              else [batch, None, None, chans])
  return y


def _host_effective_strides(values, height: int, width: int,
                            smoothness_factor: float, shared_stride: bool,
                            lower: float = 1.0,
                            upper: float = float(np.finfo(np.float32).max)):
  """(S_h, S_w) as float32 from the weight's values, as the forward pass:
  raised to N / (N - R) (straight-through formula, bit for bit), then the
  stride constraint (NaN -> lower, clipped)."""
  values = np.asarray(values, np.float32).reshape(-1)
  min_h, min_w = (minimum_stride(n, smoothness_factor) for n in (height, width))
  if shared_stride:
    s_h = s_w = sizes_lib.raise_to(values[0], np.float32(max(min_h, min_w)))
  else:
    s_h = sizes_lib.raise_to(values[0], min_h)
    s_w = sizes_lib.raise_to(values[-1], min_w)
  return (sizes_lib.constrain(s_h, lower, upper),
          sizes_lib.constrain(s_w, lower, upper))


def _host_kept(height: int, width: int, s_h, s_w, smoothness_factor: float,
               cropping: bool) -> Tuple[Tuple[int, ...], int]:
  """(kept rFFT rows in order, number of kept rFFT columns), in float32 as the
  layer's masks decide them."""
  if not cropping:
    return tuple(range(height)), width // 2 + 1
  two = np.float32(2.0)
  t_h = max(np.float32(height) / s_h, two) / two
  rows = sizes_lib.kept_indices(t_h, smoothness_factor,
                                spectral.official_row_positions(height))
  return rows, _host_kept_columns(width, s_w, smoothness_factor)


def _host_kept_columns(width: int, s_w, smoothness_factor: float) -> int:
  """Kept rFFT columns (bins 0..W // 2) of an axis of `width` at effective
  stride `s_w` (float32), as the mask decides; DiffStride1D's axis too."""
  two = np.float32(2.0)
  t_w = max(np.float32(width) / s_w, two) / two + np.float32(1.0)
  return sizes_lib.kept_count(t_w, smoothness_factor,
                              np.arange(width // 2 + 1, dtype=np.float32))


def diffstride_output_size(height: int, width: int, strides: Stride,
                           smoothness_factor: float = 4.0,
                           cropping: bool = True,
                           shared_stride: bool = False) -> Tuple[int, int]:
  """The (h', w') a DiffStride layer produces on an (H, W) map at `strides`.

  Computed in float32 exactly as the layer does, e.g.
  ``diffstride_output_size(64, 64, (2, 4)) == (40, 24)`` and
  ``diffstride_output_size(32, 32, 2) == (24, 24)``.
  """
  pair = _pair_of_strides(strides)
  for name, size in (('height', height), ('width', width)):
    if size <= smoothness_factor:
      raise ValueError(f'`{name}` ({size}) must exceed smoothness_factor '
                       f'({smoothness_factor}).')
  if not cropping:
    return height, 2 * (width // 2)
  s_h, s_w = _host_effective_strides(pair, height, width, smoothness_factor,
                                     shared_stride)
  rows, cols = _host_kept(height, width, s_h, s_w, smoothness_factor, True)
  return len(rows), 2 * (cols - 1)


def _static_spatial_dims(inputs, channels_first: bool, layer_name: str):
  height, width = _spatial_dims(inputs.shape, channels_first, layer_name)
  if height is None or width is None:
    raise ValueError(
        f'{layer_name} needs static spatial dimensions under XLA, JAX and '
        f'PyTorch (its output size is computed on the host), got input shape '
        f'{tuple(inputs.shape)}. Give the model fixed-size inputs, or use '
        'TensorFlow without jit_compile.')
  return int(height), int(width)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialPooling(keras.layers.AveragePooling2D):
  """Average pooling with 'same' padding; the strided-pooling baseline.

  Input and output: [B, H, W, C] (channels_last) or [B, C, H, W]; the output
  spatial size is ceil(H / stride_h) x ceil(W / stride_w).
  """

  def __init__(self,
               pool_size: Union[int, Tuple[int, int]] = (1, 1),
               strides: Stride = (2, 2),
               data_format: Optional[str] = None,
               **kwargs):
    kwargs.pop('padding', None)
    if data_format is not None:
      _check_data_format(data_format)
    pair = _pair_of_strides(strides)
    if any(not float(s).is_integer() for s in pair):
      raise ValueError(
          '`strides` of SpatialPooling must be whole numbers (average pooling '
          f'cannot stride by a fraction), got {strides!r}. Use DiffStride or '
          'FixedSpectralPooling for fractional strides.')
    super().__init__(pool_size=pool_size, strides=tuple(int(s) for s in pair),
                     padding='same', data_format=data_format, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StrideConstraint(keras.constraints.Constraint):
  """Clips strides into [lower_limit, upper_limit] (defaults: [1, float32 max]).

  NaN (from a non-finite update) is mapped to the lower limit, so strides never
  leave the range whatever the optimizer does.

  Applied by the optimizer after every update and explicitly in the forward
  pass, as in the official implementation.
  """

  def __init__(self,
               lower_limit: Optional[float] = None,
               upper_limit: Optional[float] = None):
    # Only finiteness here: the order check below gives the clearer message.
    lower_limit = _check_optional_limit(lower_limit, 'lower_limit', False)
    upper_limit = _check_optional_limit(upper_limit, 'upper_limit', False)
    self.lower_limit = lower_limit
    self.upper_limit = upper_limit
    self._lower = 1.0 if lower_limit is None else float(lower_limit)
    self._upper = (float(np.finfo(np.float32).max) if upper_limit is None
                   else float(upper_limit))
    if self._lower > self._upper:
      raise ValueError(
          f'`lower_limit` ({self._lower}) must not exceed `upper_limit` '
          f'({self._upper}).')

  def __call__(self, w):
    # A non-finite update (NaN or inf gradients) must not leave the range:
    # NaN goes to the lower limit, +-inf are clipped.
    w = ops.convert_to_tensor(w)  # The optimizer passes the variable.
    w = ops.where(ops.isnan(w), ops.cast(self._lower, w.dtype), w)
    return ops.clip(w, self._lower, self._upper)

  def get_config(self):
    return {'lower_limit': self.lower_limit, 'upper_limit': self.upper_limit}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FixedSpectralPooling(keras.layers.Layer):
  """Spectral pooling at fixed, possibly fractional, strides (Rippel et al.).

  Keeps the lowest frequencies of the 2-D spectrum in a hard box and inverts.
  Output size: h' = max(floor(H / S_h) rounded down to even, 2),
  w' = max(floor(W / S_w), 2); e.g. 64x64 at strides (2, 4) gives 32x16.

  Input [B, H, W, C] or [B, C, H, W] per `data_format`; output likewise.
  """

  def __init__(self,
               strides: Stride = (2.0, 2.0),
               data_format: str = CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(**kwargs)
    self._channels_first = _check_data_format(data_format)
    self.data_format = data_format
    self._strides = _pair_of_strides(strides)
    if implementation not in _IMPLEMENTATIONS:
      raise ValueError(f'`implementation` must be one of {_IMPLEMENTATIONS}, '
                       f'got {implementation!r}.')
    self.implementation = implementation
    self.supports_jit = True  # Output size is static: fine under XLA.

  def build(self, input_shape):
    height, width = _spatial_dims(input_shape, self._channels_first,
                                  type(self).__name__)
    for name, size in (('height', height), ('width', width)):
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
    if backend_ops.backend() != 'tensorflow':
      return self._call_ops(inputs)
    height, width = _dynamic_spatial_dims(inputs, self._channels_first)
    if not isinstance(height, int) or not isinstance(width, int):
      raise ValueError(
          'FixedSpectralPooling needs static spatial dimensions, got shape '
          f'{inputs.shape}.')
    out_h, out_w = self._output_size(height, width)
    half = out_h // 2
    kept_rows = tf.constant(
        np.concatenate([np.arange(half), np.arange(height - half, height)]),
        dtype=tf.int32)
    num_cols = min(out_w // 2 + 1, width // 2 + 1)
    x = tf.cast(inputs, tf.float32)
    y = _spectral_crop(x, kept_rows, tf.ones([out_h]), tf.ones([num_cols]),
                       (height, width), (out_h, out_w), self._channels_first,
                       self.implementation)
    return tf.cast(y, self.compute_dtype)

  def _call_ops(self, inputs):
    """Any backend: the same crop with `keras.ops` (hard box masks)."""
    height, width = _static_spatial_dims(inputs, self._channels_first,
                                         type(self).__name__)
    out_h, out_w = self._output_size(height, width)
    half = out_h // 2
    kept_rows = tuple(range(half)) + tuple(range(height - half, height))
    num_cols = min(out_w // 2 + 1, width // 2 + 1)
    constants = backend_ops.crop_constants(height, width, kept_rows, num_cols,
                                           out_w, ())
    y = backend_ops.spectral_crop(
        ops.cast(inputs, 'float32'), ops.ones((out_h,)), ops.ones((num_cols,)),
        constants, self._channels_first, custom_gradient=False)
    return ops.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    height, width = _spatial_dims(input_shape, self._channels_first,
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiffStride(keras.layers.Layer, sizes_lib.SizedLayer):
  """Learnable-stride spectral pooling (DiffStride, Riad et al., ICLR 2022).

  Multiplies the rFFT2D of the input by a separable adaptive-span mask
  ``clip((R + t - n) / R, 0, 1)`` with ``t_h = max(H / S_h, 2) / 2`` over row
  positions and ``t_w = max(W / S_w, 2) / 2 + 1`` over rFFT columns, crops to
  the mask's support and inverts. S = `layer.strides` (a float32 weight of
  shape (2,), or (1,) with `shared_stride`) gets its gradient through the ramp.

  Output size depends on the stride's current value: 64x64 at strides (2, 4)
  gives 40x24 (about H / S + 2R). Strides below N / (N - R) are raised to it
  (straight-through: the gradient still flows) and the weight's constraint keeps
  it there after each optimizer step, as the official layer does.

  Input [B, H, W, C] or [B, C, H, W] per `data_format`; output [B, h', w', C] or
  [B, C, h', w'] in the layer's compute dtype (the maths runs in float32).

  Under XLA, on JAX and on PyTorch the output size is a pair of Python ints
  resolved on the host from the strides' value (`diffstride.sizes`); compiled
  training keeps them current with `diffstride.track_sizes(model)`.
  """

  def __init__(self,
               strides: Stride = (2.0, 2.0),
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               shared_stride: bool = False,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(trainable=trainable, **kwargs)
    self._strides = _pair_of_strides(strides)
    if (not _is_number(smoothness_factor)
        or not math.isfinite(float(smoothness_factor))
        or float(smoothness_factor) <= 0.0):
      raise ValueError(
          '`smoothness_factor` must be a finite number > 0 (the length R of '
          f'the mask ramp), got {smoothness_factor!r}.')
    if shared_stride and self._strides[0] != self._strides[1]:
      raise ValueError(
          '`shared_stride=True` requires equal initial strides for height and '
          f'width, got strides={strides!r}.')
    self._smoothness = float(smoothness_factor)
    self._cropping = bool(cropping)
    self._shared_stride = bool(shared_stride)
    self._lower_limit = _check_optional_limit(lower_limit_stride,
                                              'lower_limit_stride')
    self._upper_limit = _check_optional_limit(upper_limit_stride,
                                              'upper_limit_stride')
    if (self._lower_limit is not None and self._upper_limit is not None
        and self._lower_limit > self._upper_limit):
      raise ValueError(
          f'`lower_limit_stride` ({self._lower_limit}) must not exceed '
          f'`upper_limit_stride` ({self._upper_limit}).')
    self._channels_first = _check_data_format(data_format)
    self.data_format = data_format
    if implementation not in _IMPLEMENTATIONS:
      raise ValueError(f'`implementation` must be one of {_IMPLEMENTATIONS}, '
                       f'got {implementation!r}.')
    self.implementation = implementation
    self.stride_constraint = StrideConstraint(self._lower_limit,
                                              self._upper_limit)
    # Under XLA the output size is static (resolved on the host from the
    # strides and kept current by `diffstride.track_sizes`).
    self.supports_jit = True

  @property
  def smoothness_factor(self) -> float:
    return self._smoothness

  @property
  def shared_stride(self) -> bool:
    return self._shared_stride

  def _min_strides(self, height, width):
    """N / (N - R) per axis, float32 as in the official layer."""
    return tuple(minimum_stride(n, self._smoothness) for n in (height, width))

  def build(self, input_shape):
    height, width = _spatial_dims(input_shape, self._channels_first,
                                  type(self).__name__)
    for name, size in (('height', height), ('width', width)):
      if size is not None and size <= self._smoothness:
        raise ValueError(
            f'DiffStride input {name} {size} is too small for '
            f'smoothness_factor={self._smoothness}: the spatial size must '
            'exceed the ramp length R. Lower smoothness_factor or downsample '
            f'less before this layer (input shape {tuple(input_shape)}).')
    init = np.array(self._strides[:1] if self._shared_stride else self._strides,
                    dtype=np.float32)
    axis_floor = None
    if height is not None and width is not None:
      # Start where the official layer is after its first call, and let the
      # optimizer's constraint keep the weight at or above N / (N - R).
      min_h, min_w = self._min_strides(height, width)
      axis_floor = ([max(min_h, min_w)] if self._shared_stride
                    else [min_h, min_w])
      init = np.maximum(init, np.array(axis_floor, np.float32))
      axis_floor = [float(v) for v in axis_floor]
    self.strides = self.add_weight(
        shape=init.shape,
        initializer=keras.initializers.Constant(init),
        trainable=True,
        dtype='float32',
        autocast=False,
        constraint=_AxisFloorConstraint(axis_floor, self._lower_limit,
                                        self._upper_limit),
        name='strides')
    self._set_host_strides(init)
    if height is not None and width is not None:
      self._record_dims((int(height), int(width)))

  def load_own_variables(self, store):
    super().load_own_variables(store)
    # Sizes from the loaded strides, not the config's initial ones.
    self._refresh_from_variable()

  def _resolve_sizes(self, dims, host_strides):
    height, width = dims
    s_h, s_w = _host_effective_strides(
        host_strides, height, width, self._smoothness, self._shared_stride,
        self.stride_constraint._lower, self.stride_constraint._upper)  # pylint: disable=protected-access
    return _host_kept(height, width, s_h, s_w, self._smoothness,
                      self._cropping)

  def _sizes_summary(self, sizes):
    kept_rows, num_cols = sizes
    return len(kept_rows), 2 * (num_cols - 1)

  def _effective_strides(self, height, width):
    """(S_h, S_w) as float32 scalars, exactly as the official forward pass."""
    min_h = minimum_stride(tf.convert_to_tensor(height), self._smoothness)
    min_w = minimum_stride(tf.convert_to_tensor(width), self._smoothness)
    strides = tf.convert_to_tensor(self.strides)

    def raise_to(value, minimum):  # Straight-through max(value, minimum).
      return value + tf.stop_gradient(tf.maximum(value, minimum) - value)

    if self._shared_stride:
      s = raise_to(strides[0], tf.maximum(min_h, min_w))
      s_h = s_w = s
    else:
      s_h = raise_to(strides[0], min_h)
      s_w = raise_to(strides[1], min_w)
    return self.stride_constraint(s_h), self.stride_constraint(s_w)

  def masks(self, height, width):
    """Full row and column masks for an (H, W) input.

    Returns:
      (row_mask float32[H], col_mask float32[W // 2 + 1]), differentiable in
      the strides.
    """
    if backend_ops.backend() == 'tensorflow':
      return self._masks(height, width)[:2]
    height, width = int(height), int(width)
    strides = ops.cast(ops.convert_to_tensor(self.strides), 'float32')
    s_h, s_w = self._static_effective_strides(strides, height, width)
    t_h = backend_ops.at_least(float(height) / s_h, 2.0) / 2.0
    t_w = backend_ops.at_least(float(width) / s_w, 2.0) / 2.0 + 1.0
    return (backend_ops.ramp_mask(t_h, self._smoothness,
                                  spectral.official_row_positions(height)),
            backend_ops.ramp_mask(t_w, self._smoothness,
                                  np.arange(width // 2 + 1, dtype=np.float32)))

  def _masks(self, height, width):
    """`masks`, plus where each depends on the strides (bool[H], bool[c])."""
    s_h, s_w = self._effective_strides(height, width)
    strided_h = tf.maximum(tf.cast(height, tf.float32) / s_h, 2.0)
    strided_w = tf.maximum(tf.cast(width, tf.float32) / s_w, 2.0)
    row_args = (strided_h / 2.0, self._smoothness,
                spectral.row_positions(height))
    col_args = (strided_w / 2.0 + 1.0, self._smoothness,
                tf.range(width // 2 + 1, dtype=tf.float32))
    return (spectral.adaptive_span_mask(*row_args),
            spectral.adaptive_span_mask(*col_args),
            spectral.ramp_has_gradient(*row_args),
            spectral.ramp_has_gradient(*col_args))

  def call(self, inputs):
    if (backend_ops.backend() == 'tensorflow' and not sizes_lib.static_forced()
        and not backend_ops.tf_in_xla_context()):
      return self._call_dynamic(inputs)
    return self._call_static(inputs)

  def _static_effective_strides(self, strides, height: int, width: int):
    """(S_h, S_w) tensors from the strides tensor, as `_effective_strides`."""
    min_h, min_w = (float(m) for m in self._min_strides(height, width))
    lower = self.stride_constraint._lower  # pylint: disable=protected-access
    upper = self.stride_constraint._upper  # pylint: disable=protected-access
    if self._shared_stride:
      s_h = s_w = backend_ops.raise_to(strides[0], max(min_h, min_w))
    else:
      s_h = backend_ops.raise_to(strides[0], min_h)
      s_w = backend_ops.raise_to(strides[1], min_w)
    return (backend_ops.constrain(s_h, lower, upper),
            backend_ops.constrain(s_w, lower, upper))

  def _call_static(self, inputs):
    """The forward pass with static shapes (XLA, JAX, PyTorch, exports)."""
    name = type(self).__name__
    height, width = _static_spatial_dims(inputs, self._channels_first, name)
    dims = (height, width)
    self._check_size(dims, inputs.shape)
    self._record_dims(dims)
    strides = ops.cast(ops.convert_to_tensor(self.strides), 'float32')
    host = backend_ops.concrete_value(strides)
    if host is not None:
      self._set_host_strides(host)
    kept_rows, num_cols = self._sizes_for(dims)
    out_size = self._sizes_summary((kept_rows, num_cols))
    if host is None:
      self._warn_if_unmanaged(out_size)
    s_h, s_w = self._static_effective_strides(strides, height, width)
    t_h = backend_ops.at_least(float(height) / s_h, 2.0) / 2.0
    t_w = backend_ops.at_least(float(width) / s_w, 2.0) / 2.0 + 1.0
    row_positions = spectral.official_row_positions(height)
    col_positions = np.arange(width // 2 + 1, dtype=np.float32)
    kept = np.asarray(kept_rows, np.int64)
    row_mask = backend_ops.ramp_mask(t_h, self._smoothness,
                                     row_positions[kept])
    col_mask = backend_ops.ramp_mask(t_w, self._smoothness,
                                     col_positions[:num_cols])
    constants = backend_ops.crop_constants(
        height, width, tuple(kept_rows), num_cols, 2 * (num_cols - 1),
        backend_ops.ramp_superset(num_cols, self._smoothness, self._cropping))
    y = backend_ops.spectral_crop(ops.cast(inputs, 'float32'), row_mask,
                                  col_mask, constants, self._channels_first)
    if (host is None and self._cropping
        and not backend_ops.in_symbolic_scope()):
      stale = ops.logical_or(
          ops.not_equal(backend_ops.count_positive(backend_ops.ramp_values(
              t_h, self._smoothness, row_positions)), len(kept_rows)),
          ops.not_equal(backend_ops.count_positive(backend_ops.ramp_values(
              t_w, self._smoothness, col_positions)), num_cols))
      y = backend_ops.stale_guard(y, stale, self._stale_message(out_size))
    return ops.cast(y, self.compute_dtype)

  def _check_size(self, dims, shape):
    for name, size in zip(('height', 'width'), dims):
      if size <= self._smoothness:
        raise ValueError(
            f'DiffStride input {name} {size} is too small for '
            f'smoothness_factor={self._smoothness}: the spatial size must '
            'exceed the ramp length R. Lower smoothness_factor or downsample '
            f'less before this layer (input shape {tuple(shape)}).')

  def _call_dynamic(self, inputs):
    """TensorFlow outside XLA: the output size found in the graph."""
    height, width = _dynamic_spatial_dims(inputs, self._channels_first)
    if not isinstance(height, int) or not isinstance(width, int):
      tf.debugging.assert_greater(
          tf.cast(tf.minimum(height, width), tf.float32), self._smoothness,
          message='DiffStride input is too small for its smoothness_factor')
    row_mask, col_mask, row_has_grad, col_has_grad = self._masks(height, width)
    if self._cropping:
      kept_rows = tf.stop_gradient(
          tf.cast(tf.where(row_mask > 0.0)[:, 0], tf.int32))
      num_cols = tf.stop_gradient(
          tf.reduce_sum(tf.cast(col_mask > 0.0, tf.int32)))
      row_mask = tf.gather(row_mask, kept_rows)
      row_has_grad = tf.gather(row_has_grad, kept_rows)
      col_mask = col_mask[:num_cols]
      col_has_grad = col_has_grad[:num_cols]
    else:
      kept_rows = tf.range(height)
      num_cols = width // 2 + 1
    out_h = tf.shape(kept_rows)[0]
    out_w = 2 * (num_cols - 1)
    x = tf.cast(inputs, tf.float32)
    y = _spectral_crop(x, kept_rows, row_mask, col_mask, (height, width),
                       (out_h, out_w), self._channels_first,
                       self.implementation, row_has_grad, col_has_grad)
    y = _set_static_channels(y, inputs, self._channels_first)
    return tf.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    _spatial_dims(input_shape, self._channels_first, type(self).__name__)
    if self._channels_first:
      return (input_shape[0], input_shape[1], None, None)
    return (input_shape[0], None, None, input_shape[3])

  def get_config(self):
    config = super().get_config()
    config.update(
        strides=self._strides,
        smoothness_factor=self._smoothness,
        cropping=self._cropping,
        shared_stride=self._shared_stride,
        lower_limit_stride=self._lower_limit,
        upper_limit_stride=self._upper_limit,
        data_format=self.data_format,
        implementation=self.implementation,
        stride_constraint=keras.constraints.serialize(self.stride_constraint))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config.pop('stride_constraint', None)  # Rebuilt from the limits.
    return cls(**config)


# The official name of DiffStride.
LearnableSpectralPooling = DiffStride


@keras.saving.register_keras_serializable(package=_PACKAGE)
class _AxisFloorConstraint(StrideConstraint):
  """StrideConstraint that also keeps each axis at or above N / (N - R).

  The official layer re-assigns the stride variable to N / (N - R) at every
  call; applying that floor in the optimizer's constraint reaches the same
  values without assigning inside `call`.
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
    return ops.clip(ops.maximum(w, ops.cast(floor, w.dtype)), self._lower,
                    self._upper)

  def get_config(self):
    config = super().get_config()
    config['axis_floor'] = self.axis_floor
    return config
