"""Padding, binomial low-pass filters and polyphase components, in keras.ops.

The maths that `BlurPool` (Zhang, ICML 2019) and `PolyphasePooling` (APS,
Chaman & Dokmanic, CVPR 2021) share, written once and used by both layers
and by the ResNets' circular padding:

  * `pad_spatial`: zero, reflect (the mirror without repeating the edge, as
    `numpy.pad(mode='reflect')` and PyTorch's ReflectionPad2d) or circular
    (`numpy.pad(mode='wrap')`) padding of the two spatial axes;
  * `binomial_filter`: the normalised outer product of the binomial
    coefficients of size 1-7 (adobe/antialiased-cnns' filters);
  * `blur`: pad by floor((f - 1) / 2) before and ceil((f - 1) / 2) after each
    axis, then the filter applied depthwise, subsampled from index 0 by an
    integer stride (the reference algorithm);
  * `polyphase_components`: the s_h x s_w polyphase components of a map.

Backend-neutral (`keras.ops`); every shape is static except the batch.
Data formats: 'channels_last' [B, H, W, C] or 'channels_first' [B, C, H, W].
"""

import math
from typing import List, Sequence, Tuple

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


def _pad_axis(x, axis: int, before: int, after: int, padding: str):
  if before == 0 and after == 0:
    return x
  if padding == 'zero':
    widths = [(0, 0)] * len(x.shape)
    widths[axis] = (before, after)
    return ops.pad(x, widths)
  n = x.shape[axis]
  if n is None:
    raise ValueError(f'{padding} padding needs a static spatial size, got '
                     f'shape {tuple(x.shape)}.')
  if padding == 'circular':
    if max(before, after) > n:
      raise ValueError(f'Circular padding by {max(before, after)} is larger '
                       f'than the spatial size {n}.')
    parts = [_take(x, axis, n - before, n), x, _take(x, axis, 0, after)]
  else:  # reflect
    if max(before, after) > n - 1:
      raise ValueError(
          f'Reflect padding by {max(before, after)} needs a spatial size of '
          f'at least {max(before, after) + 1}, got {n}: use a smaller '
          "filter_size or padding='zero' / 'circular'.")
    parts = [ops.flip(_take(x, axis, 1, before + 1), axis), x,
             ops.flip(_take(x, axis, n - 1 - after, n - 1), axis)]
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
  for axis, (before, after) in zip(_spatial_axes(channels_first), pads):
    x = _pad_axis(x, axis, int(before), int(after), padding)
  return x


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


def polyphase_components(x, strides: Tuple[int, int],
                         channels_first: bool) -> List:
  """The s_h s_w polyphase components x[i::s_h, j::s_w], in row-major (i, j)
  order, of x circularly padded to whole multiples of the strides.

  Args:
    x: [B, H, W, C] or [B, C, H, W] with static H, W.
    strides: integer (s_h, s_w).

  Returns:
    A list of s_h s_w tensors [B, ceil(H / s_h), ceil(W / s_w), C] (or
    channels_first).
  """
  h_axis, w_axis = _spatial_axes(channels_first)
  s_h, s_w = strides
  dims = (x.shape[h_axis], x.shape[w_axis])
  if any(d is None for d in dims):
    raise ValueError('Polyphase components need static spatial sizes, got '
                     f'shape {tuple(x.shape)}.')
  pads = tuple((0, -d % s) for d, s in zip(dims, strides))
  x = pad_spatial(x, pads, 'circular', channels_first)
  components = []
  for i in range(s_h):
    for j in range(s_w):
      index = [slice(None)] * 4
      index[h_axis] = slice(i, None, s_h)
      index[w_axis] = slice(j, None, s_w)
      components.append(x[tuple(index)])
  return components
