"""The real DFT matrices of a spectral crop, computed on the host (NumPy).

For fixed masks, ``irfft2d(crop(mask * rfft2d(x)))`` is linear in x and
separable over the two spatial axes: per (batch, channel) map,

    y = Re(A x B),   A = P diag(m_r) Q   [h', H],   B = F diag(g) G   [W, w']

with Q the forward DFT rows that the crop keeps, P the inverse DFT of length
h' (scaled by 1/h'), F the forward rFFT columns 0 .. c-1, G the inverse rFFT
of length w' and g the kept columns' mask times the inverse rFFT's bin
weights. Everything here depends only on the sizes (H, W, the kept rows, c,
w'), so it is computed once in float64, stored as float32 and cached; the
masks' values (which carry the stride's gradient) are applied in the
computation by `diffstride.crop`.

Shapes: H x W input, h' x w' output, c kept rFFT columns, K of them on the
mask's ramp.
"""

import collections
import functools
import math
from typing import Tuple

import numpy as np

from diffstride import masks


def _phase(k, n, length: int) -> np.ndarray:
  """2 pi (k n mod L) / L, float64 [len(k), len(n)], exact integer reduction."""
  prod = np.mod(np.outer(np.asarray(k, np.int64), np.asarray(n, np.int64)),
                length)
  return prod.astype(np.float64) * (2.0 * math.pi / length)


def irfft_weights(num_cols: int, length: int) -> np.ndarray:
  """Weight of rFFT bin l in an inverse rFFT of `length`, divided by length.

  Bin 0 and, for even lengths, bin length/2 count once, the others twice;
  bins past length // 2 are ignored, exactly as an inverse rFFT does.
  """
  cols = np.arange(num_cols)
  weight = np.full(num_cols, 2.0)
  weight[cols == 0] = 1.0
  if length % 2 == 0:
    weight[cols == length // 2] = 1.0
  weight[cols > length // 2] = 0.0
  return weight / length


def _interleave_columns(first, second):
  """[K, L], [K, L] -> [K, 2L] with columns first[:, 0], second[:, 0], ..."""
  return np.stack([first, second], axis=-1).reshape(first.shape[0], -1)


CropConstants = collections.namedtuple('CropConstants', [
    'row_positions',  # [h'] mask positions of the kept rows
    'col_positions',  # [c] mask positions of the kept columns (0 .. c-1)
    'p_re', 'p_im',   # [h', h'] inverse DFT of length h', / h'
    'q_re', 'q_im',   # [h', H] forward DFT, kept rows
    'q1', 'q2',       # [h', 2H] Q interleaved (re, -im) and (im, re)
    'g1', 'g2',       # [2w', c] inverse rFFT of length w', both parts
    'f_re', 'f_im',   # [c, W] forward rFFT columns 0 .. c-1
    'col_weights',    # [c] inverse rFFT bin weights
    'v_cols', 's_cols',  # [2K, 2w'], [2K, W]: ramp columns of G and F
    'ramp_scatter',   # [K, c] ramp column -> column, times its bin weight
])
"""The float32 operands of one 2-D crop (see the module docstring)."""

# The rank of each operand.
RANKS = tuple(1 if name in ('row_positions', 'col_positions', 'col_weights')
              else 2 for name in CropConstants._fields)


@functools.lru_cache(maxsize=256)
def crop_constants(height: int, width: int, kept_rows: Tuple[int, ...],
                   num_cols: int, out_width: int,
                   ramp_cols: Tuple[int, ...]) -> CropConstants:
  """The operands of the crop of an (H, W) map to `kept_rows` x `num_cols`.

  Args:
    height, width: H, W of the input.
    kept_rows: indices of the rFFT rows kept, in output order (h' of them).
    num_cols: c, the rFFT columns 0 .. c-1 kept.
    out_width: w', the inverse rFFT length.
    ramp_cols: the kept columns whose mask may depend on the strides (the
      column mask's gradient is computed there only; `masks.ramp_superset`).

  Returns:
    `CropConstants` of float32 arrays.
  """
  kept = np.asarray(kept_rows, np.int64)
  out_h = len(kept)
  j = np.arange(out_h)
  inv = _phase(j, j, out_h)
  p_re, p_im = np.cos(inv) / out_h, np.sin(inv) / out_h
  fwd = _phase(kept, np.arange(height), height)
  q_re, q_im = np.cos(fwd), -np.sin(fwd)
  cols = np.arange(num_cols)
  f_phase = _phase(np.arange(width), cols, width)  # [W, c]
  f_re, f_im = np.cos(f_phase), -np.sin(f_phase)
  g_phase = _phase(cols, np.arange(out_width), out_width)  # [c, w']
  g_re, g_im = np.cos(g_phase), np.sin(g_phase)
  g1 = np.concatenate([g_re.T, g_im.T], axis=0)
  g2 = np.concatenate([-g_im.T, g_re.T], axis=0)
  ramp = np.asarray(ramp_cols, np.int64)
  weights = irfft_weights(num_cols, out_width)
  scatter = np.zeros((len(ramp), num_cols))
  scatter[np.arange(len(ramp)), ramp] = weights[ramp]
  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  return CropConstants(
      row_positions=f32(masks.row_positions(height)[kept]),
      col_positions=f32(np.arange(num_cols)),
      p_re=f32(p_re), p_im=f32(p_im), q_re=f32(q_re), q_im=f32(q_im),
      q1=f32(_interleave_columns(q_re, -q_im)),
      q2=f32(_interleave_columns(q_im, q_re)),
      g1=f32(g1), g2=f32(g2), f_re=f32(f_re.T), f_im=f32(f_im.T),
      col_weights=f32(weights),
      v_cols=f32(np.concatenate([g1[:, ramp].T, g2[:, ramp].T], axis=0)),
      s_cols=f32(np.concatenate([f_re[:, ramp].T, f_im[:, ramp].T], axis=0)),
      ramp_scatter=f32(scatter))


def axis_constants(length: int, num_bins: int,
                   out_length: int) -> CropConstants:
  """The operands of a 1-D crop of a length-T axis to `num_bins` rFFT bins
  inverted at length T': the column half of a 2-D crop (height 1)."""
  return crop_constants(1, length, (0,), num_bins, out_length, ())
