"""DiffStride1D: learnable-stride spectral pooling along one axis.

The 1-D counterpart of `pooling.DiffStride`, for raw waveforms and other time
series: the rFFT of each channel is multiplied by the adaptive-span mask
``clip((R + t - n) / R, 0, 1)`` with ``t = max(T / S, 2) / 2 + 1`` over the
rFFT bins n = 0 .. T // 2, cropped to the mask's support and inverted:

    y = irfft(crop(mask * rfft(x)), length=T')

with T' = 2 (c - 1) for the c kept bins (about T / S + 2R). This is exactly
what `DiffStride` does along its width axis, so a 2-D DiffStride applied to an
input that is constant along its height returns H / h' times the 1-D result
along the width (`tests/pooling1d_test.py` checks outputs and stride
gradients against the 2-D layer).

As for the 2-D layer, the operation is linear in x for a fixed mask: the
default implementation applies it as one real matrix ``x @ Br`` (T x T'; Br
from `spectral.column_operator`, differentiable in the stride), the FFT path
uses `tf.signal.rfft` / `irfft`. 'auto' takes the matmul for T <= 2048 and
the FFT above (a 1 s waveform at 16 kHz would need a 16000 x 8000 matrix).

Under XLA, on JAX and on PyTorch the layer uses static shapes: T' is resolved
on the host from the stride's value (`diffstride.sizes`), the operator built
with `keras.ops` (`diffstride.backend_ops`); the FFT path is TensorFlow's.
"""

import math
from typing import Optional, Union

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from diffstride import backend_ops
from diffstride import pooling
from diffstride import sizes as sizes_lib
from diffstride import spectral
from diffstride.strides import minimum_stride

Number = Union[float, int]
_PACKAGE = 'diffstride'
_IMPLEMENTATIONS = ('auto', 'matmul', 'fft')
# 'auto' uses the dense operator up to this many samples, FFTs above.
_MATMUL_MAX_LENGTH = 2048


def _single_stride(strides) -> float:
  """A number, or a sequence holding exactly one number; validated >= 1."""
  value = strides
  if isinstance(strides, (tuple, list, np.ndarray)):
    if len(strides) != 1:
      raise ValueError('`strides` of DiffStride1D must be a number or a '
                       f'sequence of one number, got {strides!r}.')
    value = strides[0]
  if not (pooling._is_number(value) or isinstance(value, np.number)):  # pylint: disable=protected-access
    raise ValueError(f'`strides` must be a number, got {strides!r}.')
  if not math.isfinite(float(value)):
    raise ValueError(f'`strides` must be finite, got {strides!r}.')
  if float(value) < 1.0:
    raise ValueError('`strides` must be >= 1 (a stride below 1 would '
                     f'upsample), got {strides!r}.')
  return float(value)


def _length_dim(input_shape, channels_first: bool, layer_name: str):
  shape = tuple(input_shape)
  if len(shape) != 3:
    raise ValueError(
        f'{layer_name} expects a rank-3 input (batch, length, channels) or '
        f'(batch, channels, length), got shape {shape} (rank {len(shape)}).')
  return shape[2] if channels_first else shape[1]


def diffstride1d_output_length(length: int, strides: Number,
                               smoothness_factor: float = 4.0,
                               cropping: bool = True) -> int:
  """The T' a DiffStride1D layer produces on T samples at `strides`.

  Computed in float32 as the layer does (and as `diffstride_output_size`
  computes the width), e.g. ``diffstride1d_output_length(64, 4.0) == 24``.
  """
  stride = np.float32(_single_stride(strides))
  if length <= smoothness_factor:
    raise ValueError(f'`length` ({length}) must exceed smoothness_factor '
                     f'({smoothness_factor}).')
  return 2 * (_host_kept_bins(length, stride, smoothness_factor, cropping) - 1)


def _host_kept_bins(length: int, stride, smoothness_factor: float,
                    cropping: bool, lower: float = 1.0,
                    upper: float = float(np.finfo(np.float32).max)) -> int:
  """The number of rFFT bins kept, in float32 as the layer's mask decides."""
  if not cropping:
    return length // 2 + 1
  stride = sizes_lib.raise_to(np.float32(stride),
                              minimum_stride(length, smoothness_factor))
  stride = sizes_lib.constrain(stride, lower, upper)
  return pooling._host_kept_columns(length, stride, smoothness_factor)  # pylint: disable=protected-access


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiffStride1D(keras.layers.Layer, sizes_lib.SizedLayer):
  """Learnable-stride spectral pooling along one axis (DiffStride in 1-D).

  Arguments as `DiffStride` where they apply (there is one axis, so no
  `shared_stride`): `strides` is a number (or a sequence of one number);
  `layer.strides` is a float32 weight of shape (1,). A stride below the
  minimum T / (T - R) is raised to it in the forward pass (straight-through)
  and by the weight's constraint after each optimizer step.

  Input: [B, T, C] (channels_last) or [B, C, T] (channels_first, the default
  as for `DiffStride`). Output: [B, T', C] or [B, C, T'] with
  T' = 2 (c - 1), c the number of rFFT bins the mask keeps (about T / S + 2R;
  `diffstride1d_output_length` computes it); with `cropping=False`,
  T' = 2 (T // 2) and the masked bins are zeroed. T' depends on the stride's
  value, so the static output shape has None there; under XLA, JAX and
  PyTorch it is resolved on the host from the stride (`diffstride.sizes`;
  `diffstride.track_sizes(model)` keeps it current in compiled training). The
  output is in the layer's compute dtype; the maths runs in float32.
  """

  def __init__(self,
               strides: Number = 2.0,
               smoothness_factor: float = 4.0,
               cropping: bool = True,
               trainable: bool = True,
               lower_limit_stride: Optional[float] = None,
               upper_limit_stride: Optional[float] = None,
               data_format: str = pooling.CHANNELS_FIRST,
               implementation: str = 'auto',
               **kwargs):
    super().__init__(trainable=trainable, **kwargs)
    self._stride = _single_stride(strides)
    if (not pooling._is_number(smoothness_factor)  # pylint: disable=protected-access
        or not math.isfinite(float(smoothness_factor))
        or float(smoothness_factor) <= 0.0):
      raise ValueError(
          '`smoothness_factor` must be a finite number > 0 (the length R of '
          f'the mask ramp), got {smoothness_factor!r}.')
    self._smoothness = float(smoothness_factor)
    self._cropping = bool(cropping)
    self._lower_limit = pooling._check_optional_limit(  # pylint: disable=protected-access
        lower_limit_stride, 'lower_limit_stride')
    self._upper_limit = pooling._check_optional_limit(  # pylint: disable=protected-access
        upper_limit_stride, 'upper_limit_stride')
    if (self._lower_limit is not None and self._upper_limit is not None
        and self._lower_limit > self._upper_limit):
      raise ValueError(
          f'`lower_limit_stride` ({self._lower_limit}) must not exceed '
          f'`upper_limit_stride` ({self._upper_limit}).')
    self._channels_first = pooling._check_data_format(data_format)  # pylint: disable=protected-access
    self.data_format = data_format
    if implementation not in _IMPLEMENTATIONS:
      raise ValueError(f'`implementation` must be one of {_IMPLEMENTATIONS}, '
                       f'got {implementation!r}.')
    self.implementation = implementation
    self.stride_constraint = pooling.StrideConstraint(self._lower_limit,
                                                      self._upper_limit)
    # Static output length under XLA (see `diffstride.sizes`).
    self.supports_jit = True

  @property
  def smoothness_factor(self) -> float:
    return self._smoothness

  def build(self, input_shape):
    length = _length_dim(input_shape, self._channels_first,
                         type(self).__name__)
    if length is not None and length <= self._smoothness:
      raise ValueError(
          f'DiffStride1D input length {length} is too small for '
          f'smoothness_factor={self._smoothness}: the length must exceed the '
          f'ramp length R (input shape {tuple(input_shape)}).')
    init = np.array([self._stride], np.float32)
    floor = None
    if length is not None:
      minimum = minimum_stride(length, self._smoothness)
      init = np.maximum(init, minimum)
      floor = [float(minimum)]
    self.strides = self.add_weight(
        shape=(1,),
        initializer=keras.initializers.Constant(init),
        trainable=True,
        dtype='float32',
        autocast=False,
        constraint=pooling._AxisFloorConstraint(  # pylint: disable=protected-access
            floor, self._lower_limit, self._upper_limit),
        name='strides')
    self._set_host_strides(init)
    if length is not None:
      self._record_dims((int(length),))

  def load_own_variables(self, store):
    super().load_own_variables(store)
    self._refresh_from_variable()  # The loaded stride, not the config's.

  def _resolve_sizes(self, dims, host_strides):
    return _host_kept_bins(dims[0], np.asarray(host_strides).reshape(-1)[0],
                           self._smoothness, self._cropping,
                           self.stride_constraint._lower,  # pylint: disable=protected-access
                           self.stride_constraint._upper)  # pylint: disable=protected-access

  def _sizes_summary(self, sizes):
    return (2 * (sizes - 1),)

  def _effective_stride(self, length) -> tf.Tensor:
    minimum = minimum_stride(tf.convert_to_tensor(length), self._smoothness)
    stride = tf.convert_to_tensor(self.strides)[0]
    stride = stride + tf.stop_gradient(tf.maximum(stride, minimum) - stride)
    return self.stride_constraint(stride)

  def mask(self, length):
    """float32[T // 2 + 1]: the mask over the rFFT bins of a length-T input."""
    if backend_ops.backend() != 'tensorflow':
      length = int(length)
      stride = backend_ops.constrain(
          backend_ops.raise_to(
              ops.cast(ops.convert_to_tensor(self.strides), 'float32')[0],
              float(minimum_stride(length, self._smoothness))),
          self.stride_constraint._lower, self.stride_constraint._upper)  # pylint: disable=protected-access
      t = backend_ops.at_least(float(length) / stride, 2.0) / 2.0 + 1.0
      return backend_ops.ramp_mask(
          t, self._smoothness, np.arange(length // 2 + 1, dtype=np.float32))
    stride = self._effective_stride(length)
    strided = tf.maximum(tf.cast(length, tf.float32) / stride, 2.0)
    return spectral.adaptive_span_mask(
        strided / 2.0 + 1.0, self._smoothness,
        tf.range(length // 2 + 1, dtype=tf.float32))

  def _use_matmul(self, length) -> bool:
    if self.implementation != 'auto':
      return self.implementation == 'matmul'
    return isinstance(length, int) and length <= _MATMUL_MAX_LENGTH

  def call(self, inputs):
    if (backend_ops.backend() == 'tensorflow' and not sizes_lib.static_forced()
        and not backend_ops.tf_in_xla_context()):
      return self._call_dynamic(inputs)
    return self._call_static(inputs)

  def _call_static(self, inputs):
    """Static shapes (XLA, JAX, PyTorch, exports): T' resolved on the host."""
    axis = 2 if self._channels_first else 1
    _length_dim(inputs.shape, self._channels_first, type(self).__name__)
    length = inputs.shape[axis]
    if length is None:
      raise ValueError(
          'DiffStride1D needs a static length under XLA, JAX and PyTorch, got '
          f'input shape {tuple(inputs.shape)}.')
    length = int(length)
    if length <= self._smoothness:
      raise ValueError(
          f'DiffStride1D input length {length} is too small for '
          f'smoothness_factor={self._smoothness}.')
    self._record_dims((length,))
    strides = ops.cast(ops.convert_to_tensor(self.strides), 'float32')
    host = backend_ops.concrete_value(strides)
    if host is not None:
      self._set_host_strides(host)
    num_bins = self._sizes_for((length,))
    out_length = 2 * (num_bins - 1)
    if host is None:
      self._warn_if_unmanaged((out_length,))
    minimum = float(minimum_stride(length, self._smoothness))
    stride = backend_ops.constrain(
        backend_ops.raise_to(strides[0], minimum),
        self.stride_constraint._lower, self.stride_constraint._upper)  # pylint: disable=protected-access
    t = backend_ops.at_least(float(length) / stride, 2.0) / 2.0 + 1.0
    positions = np.arange(length // 2 + 1, dtype=np.float32)
    mask = backend_ops.ramp_mask(t, self._smoothness, positions[:num_bins])
    constants = backend_ops.crop_constants(1, length, (0,), num_bins,
                                           out_length, ())
    b_re = backend_ops.column_operator(mask, constants)  # [T, T']
    x = ops.cast(inputs, 'float32')
    if self._channels_first:
      y = ops.reshape(ops.matmul(ops.reshape(x, (-1, length)), b_re),
                      (-1, x.shape[1], out_length))
    else:
      y = ops.matmul(ops.transpose(b_re), x)  # [T', T] @ [B, T, C]
    if (host is None and self._cropping
        and not backend_ops.in_symbolic_scope()):
      stale = ops.not_equal(backend_ops.count_positive(
          backend_ops.ramp_values(t, self._smoothness, positions)), num_bins)
      y = backend_ops.stale_guard(y, stale, self._stale_message(
          (out_length,)))
    return ops.cast(y, self.compute_dtype)

  def _call_dynamic(self, inputs):
    """TensorFlow outside XLA: the output length found in the graph."""
    axis = 2 if self._channels_first else 1
    static = inputs.shape[axis]
    length = int(static) if static is not None else tf.shape(inputs)[axis]
    if not isinstance(length, int):
      tf.debugging.assert_greater(
          tf.cast(length, tf.float32), self._smoothness,
          message='DiffStride1D input is too short for its smoothness_factor')
    mask = self.mask(length)
    if self._cropping:
      num_bins = tf.stop_gradient(tf.reduce_sum(tf.cast(mask > 0.0, tf.int32)))
      mask = mask[:num_bins]
    else:
      num_bins = length // 2 + 1
    out_length = 2 * (num_bins - 1)
    x = tf.cast(inputs, tf.float32)
    if not self._channels_first:
      x = tf.transpose(x, (0, 2, 1))  # [B, C, T]
    if self._use_matmul(length):
      b_re, _ = spectral.column_operator(mask, length, out_length)  # [T, T']
      shape = tf.shape(x)
      y = tf.matmul(tf.reshape(x, [-1, shape[2]]), b_re)
      y = tf.reshape(y, [shape[0], shape[1], out_length])
    else:
      spec = tf.signal.rfft(x)[..., :num_bins]
      y = tf.signal.irfft(spec * tf.complex(mask, 0.0),
                          fft_length=tf.reshape(out_length, [1]))
    if not self._channels_first:
      y = tf.transpose(y, (0, 2, 1))
    chans = inputs.shape[1] if self._channels_first else inputs.shape[2]
    y.set_shape([inputs.shape[0], chans, None] if self._channels_first
                else [inputs.shape[0], None, chans])
    return tf.cast(y, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    _length_dim(input_shape, self._channels_first, type(self).__name__)
    if self._channels_first:
      return (input_shape[0], input_shape[1], None)
    return (input_shape[0], None, input_shape[2])

  def get_config(self):
    config = super().get_config()
    config.update(
        strides=self._stride,
        smoothness_factor=self._smoothness,
        cropping=self._cropping,
        lower_limit_stride=self._lower_limit,
        upper_limit_stride=self._upper_limit,
        data_format=self.data_format,
        implementation=self.implementation)
    return config
