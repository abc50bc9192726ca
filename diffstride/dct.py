"""The real DCT matrices of a DCT crop, computed on the host (NumPy).

DCT-DiffStride (`diffstride.layers.DCTDiffStride`) replaces the DFT of
DiffStride by the orthonormal type-II DCT. Along one axis of N samples with
M kept frequencies (the first M DCT bins, where the mask is > 0):

    y = C3_M diag(m) C2_{M x N} x

with C2_{M x N} the first M rows of the orthonormal DCT-II matrix of size N
and C3_M = C2_M^T the orthonormal DCT-III (its inverse) of size M. The two
axes are separable: per (batch, channel) map, ``y = A_h x A_w^T`` with
``A = C3_M diag(m) C2_{M x N}`` per axis (`diffstride.crop.dct_crop`).

The matrices depend only on (N, M): they are computed once in float64,
stored as float32 and cached; the masks' values (which carry the stride's
gradient) are applied in the computation.
"""

import collections
import functools

import numpy as np

DCTConstants = collections.namedtuple('DCTConstants', [
    'row_positions',  # [h'] mask positions of the kept rows (0 .. h'-1)
    'col_positions',  # [w'] mask positions of the kept columns
    'row_inverse',    # [h', h'] orthonormal DCT-III of size h'
    'row_forward',    # [h', H] first h' rows of the DCT-II of size H
    'col_inverse',    # [w', w'] orthonormal DCT-III of size w'
    'col_forward',    # [w', W] first w' rows of the DCT-II of size W
])
"""The float32 operands of one 2-D DCT crop (see the module docstring)."""

# The rank of each operand (for operands computed at run time).
RANKS = (1, 1, 2, 2, 2, 2)


@functools.lru_cache(maxsize=64)
def dct2_matrix(size: int) -> np.ndarray:
  """The orthonormal DCT-II matrix of `size` (float64 [N, N], read-only):

      C[k, n] = sqrt((1 if k == 0 else 2) / N) cos(pi k (2 n + 1) / (2 N)),

  so that ``C @ x == scipy.fft.dct(x, norm='ortho')`` and C^T is its inverse
  (the orthonormal DCT-III)."""
  k = np.arange(size, dtype=np.int64)[:, None]
  n = np.arange(size, dtype=np.int64)[None, :]
  # pi k (2n + 1) / (2N) with the integer k (2n + 1) reduced mod 4N (exact).
  phase = np.mod(k * (2 * n + 1), 4 * size).astype(np.float64)
  matrix = np.cos(phase * (np.pi / (2 * size))) * np.sqrt(2.0 / size)
  matrix[0] /= np.sqrt(2.0)
  matrix.setflags(write=False)
  return matrix


def positions(size: int) -> np.ndarray:
  """The mask positions of the DCT bins of a length-N axis: 0 .. N - 1, the
  lowest frequency first (float32[N])."""
  return np.arange(size, dtype=np.float32)


@functools.lru_cache(maxsize=256)
def crop_constants(height: int, width: int, out_height: int,
                   out_width: int) -> DCTConstants:
  """The operands of the DCT crop of an (H, W) map to its first
  h' x w' frequencies (float32 `DCTConstants`)."""
  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  return DCTConstants(
      row_positions=positions(out_height),
      col_positions=positions(out_width),
      row_inverse=f32(dct2_matrix(out_height).T),
      row_forward=f32(dct2_matrix(height)[:out_height]),
      col_inverse=f32(dct2_matrix(out_width).T),
      col_forward=f32(dct2_matrix(width)[:out_width]))
