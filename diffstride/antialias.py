"""Padding, binomial low-pass filters and polyphase components, in keras.ops.

The maths that `BlurPool` (Zhang, ICML 2019), `PolyphasePooling` (APS,
Chaman & Dokmanic, CVPR 2021) and `LearnablePolyphasePooling` (LPS,
Rojas-Gomez et al., NeurIPS 2022) share, written once and used by these
layers and by the ResNets' circular padding:

  * `pad_spatial`: zero, reflect (the mirror without repeating the edge, as
    `numpy.pad(mode='reflect')` and PyTorch's ReflectionPad2d) or circular
    (`numpy.pad(mode='wrap')`) padding of the two spatial axes;
  * `binomial_filter`: the normalised outer product of the binomial
    coefficients of size 1-7 (adobe/antialiased-cnns' filters);
  * `blur`: pad by floor((f - 1) / 2) before and ceil((f - 1) / 2) after each
    axis, then the filter applied depthwise, subsampled from index 0 by an
    integer stride (the reference algorithm);
  * `polyphase_components`: the s_h x s_w polyphase components of a map,
    stacked, `component_at` to take one per example and `mix_components`
    to take a weighted sum of them per example.

Backend-neutral (`keras.ops`); every shape is static except the batch.
Data formats: 'channels_last' [B, H, W, C] or 'channels_first' [B, C, H, W].
"""

import math
from typing import Sequence, Tuple

from keras import ops
import numpy as np

PADDINGS = ('reflect', 'zero', 'circular')
MAX_FILTER_SIZE = 7


def check_padding(padding: str) -> str:
  if padding not in PADDINGS:
    raise ValueError(f'`padding` must be one of {PADDINGS}, got {padding!r}.')
  return padding


def check_filter_size(filter_size) -> int:
  if (isinstance(filter_size, bool) or not isinstance(filter_size, int)
      or not 1 <= filter_size <= MAX_FILTER_SIZE):
    raise ValueError(
        f'`filter_size` must be an integer from 1 to {MAX_FILTER_SIZE} (the '
        f'binomial filters of adobe/antialiased-cnns), got {filter_size!r}.')
  return filter_size


def binomial_filter(filter_size: int) -> np.ndarray:
  """The [f, f] binomial low-pass filter: outer(a, a) / sum, a = C(f-1, k).

  >>> binomial_filter(3) * 16
  array([[1., 2., 1.],
         [2., 4., 2.],
         [1., 2., 1.]])
  """
  check_filter_size(filter_size)
  a = np.array([math.comb(filter_size - 1, k) for k in range(filter_size)],
               np.float64)
  f = np.outer(a, a)
  return f / f.sum()


def filter_padding(filter_size: int) -> Tuple[int, int]:
  """(before, after) = (floor((f - 1) / 2), ceil((f - 1) / 2))."""
  return (filter_size - 1) // 2, filter_size // 2


def _spatial_axes(channels_first: bool) -> Tuple[int, int]:
  return (2, 3) if channels_first else (1, 2)


def _take(x, axis: int, start: int, stop: int):
  index = [slice(None)] * len(x.shape)
  index[axis] = slice(start, stop)
  return x[tuple(index)]


def _circular_pad_axis(x, axis: int, before: int, after: int):
  n = x.shape[axis]
  if max(before, after) > n:
    raise ValueError(f'Circular padding by {max(before, after)} is larger '
                     f'than the spatial size {n}.')
  parts = [_take(x, axis, n - before, n), x, _take(x, axis, 0, after)]
  return ops.concatenate([p for p in parts if p.shape[axis] != 0], axis=axis)


def pad_spatial(x, pads: Sequence[Tuple[int, int]], padding: str,
                channels_first: bool):
  """x padded by pads = ((top, bottom), (left, right)).

  Args:
    x: [B, H, W, C] or [B, C, H, W].
    pads: per spatial axis, (before, after).
    padding: 'zero', 'reflect' or 'circular'.
    channels_first: the data format.

  Returns:
    [B, H + top + bottom, W + left + right, C] (or channels_first).
  """
  check_padding(padding)
  axes = _spatial_axes(channels_first)
  pads = [(int(before), int(after)) for before, after in pads]
  if all(p == (0, 0) for p in pads):
    return x
  if padding != 'zero':
    for axis, (before, after) in zip(axes, pads):
      n = x.shape[axis]
      if n is None:
        raise ValueError(f'{padding} padding needs static spatial sizes, '
                         f'got shape {tuple(x.shape)}.')
      if padding == 'reflect' and max(before, after) > n - 1:
        raise ValueError(
            f'Reflect padding by {max(before, after)} needs a spatial size '
            f'of at least {max(before, after) + 1}, got {n}: use a smaller '
            "filter_size or padding='zero' / 'circular'.")
  if padding == 'circular':  # Backends name it differently in ops.pad.
    for axis, (before, after) in zip(axes, pads):
      x = _circular_pad_axis(x, axis, before, after)
    return x
  widths = [(0, 0)] * 4
  for axis, pad in zip(axes, pads):
    widths[axis] = pad
  # Both axes in one call (PyTorch reflects only trailing-axis layouts).
  return ops.pad(x, widths, mode='reflect' if padding == 'reflect'
                 else 'constant')


def blur(x, filter_size: int, strides: Tuple[int, int], padding: str,
         channels_first: bool):
  """The binomial filter applied depthwise after padding, subsampled.

  Args:
    x: [B, H, W, C] or [B, C, H, W] (floating point).
    filter_size: f in 1..7.
    strides: integer (s_h, s_w); output rows 0, s_h, 2 s_h, ...
    padding: of the input before the filter ('reflect', 'zero', 'circular').
    channels_first: the data format.

  Returns:
    [B, ceil(H / s_h), ceil(W / s_w), C] (or channels_first), x's dtype.
  """
  s_h, s_w = strides
  if filter_size == 1:  # The identity filter: subsampling only.
    index = [slice(None)] * 4
    h_axis, w_axis = _spatial_axes(channels_first)
    index[h_axis], index[w_axis] = slice(None, None, s_h), slice(None, None, s_w)
    return x[tuple(index)]
  pad = filter_padding(filter_size)
  x = pad_spatial(x, (pad, pad), padding, channels_first)
  if channels_first:  # Depthwise convolutions run channels_last everywhere.
    x = ops.transpose(x, (0, 2, 3, 1))
  channels = x.shape[-1]
  kernel = np.tile(binomial_filter(filter_size)[:, :, None, None],
                   (1, 1, channels, 1))
  y = ops.depthwise_conv(x, ops.cast(kernel, x.dtype), strides=(s_h, s_w),
                         padding='valid', data_format='channels_last')
  if channels_first:
    y = ops.transpose(y, (0, 3, 1, 2))
  return y


def polyphase_components(x, strides: Tuple[int, int], channels_first: bool):
  """The s_h s_w polyphase components x[i::s_h, j::s_w], stacked in
  row-major (i, j) order, of x circularly padded to whole multiples of the
  strides.

  Args:
    x: [B, H, W, C] or [B, C, H, W] with static H, W (and C).
    strides: integer (s_h, s_w).

  Returns:
    [B, s_h s_w, h, w, C] (or [B, s_h s_w, C, h, w]) with h = ceil(H / s_h),
    w = ceil(W / s_w).
  """
  h_axis, w_axis = _spatial_axes(channels_first)
  s_h, s_w = strides
  dims = (x.shape[h_axis], x.shape[w_axis])
  if any(d is None for d in dims):
    raise ValueError('Polyphase components need static spatial sizes, got '
                     f'shape {tuple(x.shape)}.')
  pads = tuple((0, -d % s) for d, s in zip(dims, strides))
  x = pad_spatial(x, pads, 'circular', channels_first)
  h, w = -(-dims[0] // s_h), -(-dims[1] // s_w)
  if channels_first:
    c = x.shape[1]
    x = ops.reshape(x, (-1, c, h, s_h, w, s_w))
    x = ops.transpose(x, (0, 3, 5, 1, 2, 4))
    return ops.reshape(x, (-1, s_h * s_w, c, h, w))
  c = x.shape[3]
  x = ops.reshape(x, (-1, h, s_h, w, s_w, c))
  x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
  return ops.reshape(x, (-1, s_h * s_w, h, w, c))


def component_at(components, indices):
  """components[b, indices[b]] for each example b.

  Args:
    components: [B, P, ...] (`polyphase_components`).
    indices: int32 [B].

  Returns:
    [B, ...].
  """
  # A gather along one axis of the flattened [B P, ...] stack (cheaper to
  # differentiate than take_along_axis on TensorFlow).
  num = components.shape[1]
  batch = ops.shape(components)[0]
  flat = ops.reshape(components, (-1,) + tuple(components.shape[2:]))
  rows = ops.arange(batch, dtype='int32') * num + ops.cast(indices, 'int32')
  return ops.take(flat, rows, axis=0)


def mix_components(components, weights):
  """sum_k weights[b, k] components[b, k] for each example b (a soft
  `component_at`).

  Args:
    components: [B, P, ...] (`polyphase_components`).
    weights: [B, P] (e.g. a softmax over the components).

  Returns:
    [B, ...], the components' dtype.
  """
  num = components.shape[1]
  weights = ops.reshape(ops.cast(weights, components.dtype),
                        (-1, num) + (1,) * (len(components.shape) - 2))
  return ops.sum(weights * components, axis=1)
