"""Spectral cropping as separable real linear operators.

The DiffStride family of layers computes, per channel, ``irfft2d(crop(mask *
rfft2d(x)))``. For fixed masks this is linear in ``x`` and separable over the two
spatial axes, so for a single (H, W) channel ``x``::

    y = Re(A x B) = Ar x Br - Ai x Bi

where ``A`` (h' x H) is the inverse DFT of length h' composed with the masked,
row-cropped forward DFT, and ``B`` (W x w') is the masked, column-cropped forward
rFFT composed with the inverse rFFT of length w'. Building A and B costs
O(h'^2 H + W c w') and is differentiable in the masks, so the stride gradient
flows through ordinary matmul gradients: no complex dtypes and no `tf.signal`
call. `Ai` only comes from frequencies where the mask is asymmetric, so it is
applied as a thin product U @ Vt (`split_row_operator`).

Where the time goes (CPU, (64, 32, 32, 64) channels_last, forward+backward
about 56 ms against 137 ms for the FFT pipeline with automatic gradients):
forward about 20 ms, input gradient about 18 ms, stride gradient about 21 ms
(its GEMMs reduce over B*W*C into h' x H and W x w' matrices). The GEMMs run
at the machine's GEMM rate; each transpose in `apply_split` moves whole
innermost rows, which costs about a copy (a transpose that swaps the innermost
axis costs 2-3x more). Tried and slower: batched matmuls over the middle
axes, chunked reductions, XLA.

The FFT path (`fft_spectral_crop`) computes the same thing with `tf.signal` and is
kept for large maps, where O(HW log HW) beats the dense operators.

All maths here runs in float32. Shapes use B (batch), C (channels), H, W (input
spatial size), h', w' (output spatial size) and c (kept rFFT columns).
"""

import math
from typing import Tuple

import numpy as np
import tensorflow as tf

_TWO_PI = 2.0 * math.pi


def official_row_positions(height: int) -> np.ndarray:
  """Position of each rFFT row in the mask, as the official layer lays them out.

  The official code builds ``[n-1, ..., 1, 0, 0, 1, ..., n-1]`` (odd sizes drop
  one end) and fftshifts it. For even H this is |frequency| for rows 0..H/2 and
  |frequency| - 1 for negative frequencies; it is kept bit-for-bit so that
  outputs and output sizes equal the official ones.

  Args:
    height: H, the number of rows of the input.

  Returns:
    np.ndarray<float32>[H]: the position of row k of ``rfft2d(x)``.
  """
  half = np.arange(height // 2 + height % 2, dtype=np.float32)
  layout = np.concatenate([half[height % 2:][::-1], half])
  return np.fft.fftshift(layout).astype(np.float32)


def row_positions(height) -> tf.Tensor:
  """Graph version of `official_row_positions` for a possibly dynamic H."""
  height = tf.convert_to_tensor(height, tf.int32)
  half = tf.range(height // 2 + height % 2, dtype=tf.float32)
  layout = tf.concat([tf.reverse(half[height % 2:], axis=[0]), half], axis=0)
  return tf.roll(layout, shift=height // 2, axis=0)


def adaptive_span_mask(threshold: tf.Tensor, smoothness: float,
                       positions: tf.Tensor) -> tf.Tensor:
  """The adaptive-span ramp of Sukhbaatar et al. (2019).

  ``clip((R + t - n) / R, 0, 1)``, in the official operation order so that the
  set of non-zero entries (hence the output size) is bit-identical.

  Args:
    threshold: scalar float32 t, where the ramp starts.
    smoothness: R > 0, the length of the ramp.
    positions: float32[N] positions n.

  Returns:
    float32[N] mask values in [0, 1]. Its gradient in t is 1/R where
    0 <= value <= 1 (inclusive, like `tf.clip_by_value`).
  """
  value = (1.0 / smoothness) * (smoothness + threshold - positions)
  return tf.clip_by_value(value, 0.0, 1.0)


def _phase(k: tf.Tensor, n: tf.Tensor, length) -> tf.Tensor:
  """2 pi (k n mod L) / L as float32[len(k), len(n)], exact integer reduction."""
  length = tf.cast(length, tf.int64)
  prod = tf.math.floormod(
      tf.cast(k, tf.int64)[:, None] * tf.cast(n, tf.int64)[None, :], length)
  return tf.cast(prod, tf.float32) * (_TWO_PI / tf.cast(length, tf.float32))


def irfft_weights(num_cols, length) -> tf.Tensor:
  """Weight of rFFT bin l in an inverse rFFT of `length` (1, 2 or 0), / length.

  Bin 0 and, for even lengths, bin length/2 count once; bins past length//2
  are ignored by `irfft`, exactly as `tf.signal.irfft` does.
  """
  length = tf.convert_to_tensor(length, tf.int32)
  cols = tf.range(num_cols, dtype=tf.int32)
  once = tf.logical_or(
      tf.equal(cols, 0),
      tf.logical_and(tf.equal(length % 2, 0), tf.equal(cols, length // 2)))
  weight = tf.where(once, 1.0, 2.0)
  weight = tf.where(cols > length // 2, 0.0, weight)
  return weight / tf.cast(length, tf.float32)


def row_operator(kept_rows: tf.Tensor, row_mask: tf.Tensor,
                 in_height) -> Tuple[tf.Tensor, tf.Tensor]:
  """Real and imaginary parts of A = IDFT_h' diag(mask) DFT_H[kept_rows].

  Args:
    kept_rows: int[h'] indices of the rFFT rows kept, in output order.
    row_mask: float32[h'] mask value of each kept row (differentiable).
    in_height: H.

  Returns:
    (Ar, Ai), each float32[h', H].
  """
  out_height = tf.shape(kept_rows)[0]
  j = tf.range(out_height)
  inv_phase = _phase(j, j, out_height)  # [h', h'] (j, j')
  scale = row_mask / tf.cast(out_height, tf.float32)
  inv_re = tf.cos(inv_phase) * scale[None, :]
  inv_im = tf.sin(inv_phase) * scale[None, :]
  fwd_phase = _phase(kept_rows, tf.range(in_height), in_height)  # [h', H]
  fwd_re = tf.cos(fwd_phase)
  fwd_im = -tf.sin(fwd_phase)
  a_re = tf.matmul(inv_re, fwd_re) - tf.matmul(inv_im, fwd_im)
  a_im = tf.matmul(inv_re, fwd_im) + tf.matmul(inv_im, fwd_re)
  return a_re, a_im


def split_row_operator(kept_rows: tf.Tensor, row_mask: tf.Tensor, in_height,
                       in_ramp: tf.Tensor
                       ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """A = Ar + i Ai with Ai factored as a thin product U @ Vt.

  With signed frequencies f (output row j holds f mod h'), ``A[j, m] = (1/h')
  sum_f a(f) exp(i f phi_jm)`` with ``phi_jm = 2 pi (j/h' - m/H)``, so
  ``Ai = (1/h') sum_{f>0} (a(f) - a(-f)) sin(f phi)``: only frequencies where
  the kept mask is asymmetric contribute (the ramp, about R of them, and an
  unpaired Nyquist row), each with a rank-2 term. This cuts the work of the
  imaginary part from h' rows to 2|D| rows.

  Args:
    kept_rows: int[h'] rFFT row indices kept, ascending (a contiguous band of
      signed frequencies around 0, as every DiffStride crop is).
    row_mask: float32[h'] mask of the kept rows (differentiable).
    in_height: H.
    in_ramp: bool[h'], the kept rows whose mask has a non-zero derivative
      (on the ramp or at its upper edge, where the clip still passes the
      gradient). The band D holds every frequency at which either side is
      in the ramp or not kept, so Ai and its gradient are exact.

  Returns:
    (Ar float32[h', H], U float32[h', 2D], Vt float32[2D, H]) with
    Ai = U @ Vt.
  """
  in_height = tf.convert_to_tensor(in_height, tf.int32)
  out_height = tf.shape(kept_rows)[0]
  kept_rows = tf.cast(kept_rows, tf.int32)
  signed = tf.where(kept_rows > in_height // 2, kept_rows - in_height,
                    kept_rows)  # [h'] signed frequency of each kept row
  a_re, _ = row_operator(kept_rows, row_mask, in_height)
  # Mask as a function of signed frequency on [-F, F]; 0 where not kept.
  top = tf.reduce_max(tf.abs(signed))
  dense = tf.scatter_nd(tf.expand_dims(signed + top, 1), row_mask,
                        tf.expand_dims(2 * top + 1, 0))
  pos_side = dense[top + 1:]  # a(1..F)
  neg_side = tf.reverse(dense[:top], axis=[0])  # a(-1..-F)
  diff = pos_side - neg_side  # [F]
  # Below the band, both sides are kept with a constant mask of 1: a(f) and
  # a(-f) are equal and stay equal under any change of the stride. Positions
  # grow with |f| on each side, so the rest is one band [f0, F].
  ramp = tf.scatter_nd(tf.expand_dims(signed + top, 1),
                       tf.cast(in_ramp, tf.int32),
                       tf.expand_dims(2 * top + 1, 0))
  kept = tf.scatter_nd(tf.expand_dims(signed + top, 1),
                       tf.ones_like(signed), tf.expand_dims(2 * top + 1, 0))
  flat = tf.logical_and(
      tf.logical_and(kept[top + 1:] > 0, tf.reverse(kept[:top], [0]) > 0),
      tf.logical_and(ramp[top + 1:] == 0, tf.reverse(ramp[:top], [0]) == 0))
  varying = tf.cast(tf.where(tf.logical_not(flat))[:, 0], tf.int32)
  first = tf.cond(tf.size(varying) > 0, lambda: tf.reduce_min(varying),
                  lambda: top)
  freqs = tf.range(first, top) + 1  # [D] positive frequencies
  coef = tf.gather(diff, freqs - 1) / tf.cast(out_height, tf.float32)
  out_phase = _phase(freqs, tf.range(out_height), out_height)  # [D, h']
  in_phase = _phase(freqs, tf.range(in_height), in_height)  # [D, H]
  # sin(f(a - b)) = sin(fa)cos(fb) - cos(fa)sin(fb)
  u = tf.concat([tf.sin(out_phase) * coef[:, None],
                 -tf.cos(out_phase) * coef[:, None]], axis=0)  # [2D, h']
  vt = tf.concat([tf.cos(in_phase), tf.sin(in_phase)], axis=0)  # [2D, H]
  return a_re, tf.transpose(u), vt


def apply_split(x: tf.Tensor, a_re: tf.Tensor, u: tf.Tensor, vt: tf.Tensor,
                b_re: tf.Tensor, b_im: tf.Tensor,
                channels_first: bool) -> tf.Tensor:
  """y = Ar x Br - U (Vt x Bi), per (batch, channel) slice.

  Every contraction is one plain 2-D GEMM over an outermost or innermost
  axis, and every transpose moves whole innermost rows (C-vectors for
  channels_last, w'-vectors for channels_first), which on CPU costs about a
  copy; transposes that swap the innermost axis cost 2-3x more.

  Args:
    x: float32[B, H, W, C] (channels_last) or [B, C, H, W].
    a_re: float32[h', H]; u: float32[h', 2D]; vt: float32[2D, H].
    b_re, b_im: float32[W, w'].
    channels_first: the layout of x (and of the result).

  Returns:
    float32[B, h', w', C] or [B, C, h', w'].
  """
  out_h, rank = tf.shape(a_re)[0], tf.shape(vt)[0]
  out_w = tf.shape(b_re)[1]
  shape = tf.shape(x)
  if channels_first:
    batch, chans, height, width = shape[0], shape[1], shape[2], shape[3]
    x = tf.reshape(x, [-1, width])  # [B C H, W]: W is already innermost.

    def contract_w(cols):  # -> [H, B C w']
      t = tf.reshape(tf.matmul(x, cols), [batch, chans, height, out_w])
      return tf.reshape(tf.transpose(t, (2, 0, 1, 3)), [height, -1])

    y = tf.matmul(a_re, contract_w(b_re))
    y -= tf.matmul(u, tf.matmul(vt, contract_w(b_im)))  # [h', B C w']
    y = tf.reshape(y, [out_h, batch, chans, out_w])
    return tf.transpose(y, (1, 2, 0, 3))
  batch, height, width, chans = shape[0], shape[1], shape[2], shape[3]
  x = tf.reshape(tf.transpose(x, (1, 0, 2, 3)), [height, -1])  # [H, B W C]

  def contract_w(rows, cols, num_rows):  # rows @ x @ cols -> [w', rows B C]
    t = tf.reshape(tf.matmul(rows, x), [num_rows, batch, width, chans])
    t = tf.reshape(tf.transpose(t, (2, 0, 1, 3)), [width, -1])
    return tf.matmul(cols, t, transpose_a=True)

  y_re = tf.reshape(contract_w(a_re, b_re, out_h),
                    [out_w, out_h, batch, chans])
  z = tf.reshape(contract_w(vt, b_im, rank), [out_w, rank, batch * chans])
  z = tf.reshape(tf.transpose(z, (1, 0, 2)), [rank, -1])  # [2D, w' B C]
  y_im = tf.reshape(tf.matmul(u, z), [out_h, out_w, batch, chans])
  y = tf.transpose(y_re, (1, 0, 2, 3)) - y_im  # [h', w', B, C]
  return tf.transpose(y, (2, 0, 1, 3))


def column_operator(col_mask: tf.Tensor, in_width,
                    out_width) -> Tuple[tf.Tensor, tf.Tensor]:
  """Real and imaginary parts of B = rDFT_W[:, :c] diag(mask) irDFT_w'.

  Args:
    col_mask: float32[c] mask of the first c rFFT columns (differentiable).
    in_width: W.
    out_width: w', the inverse rFFT length.

  Returns:
    (Br, Bi), each float32[W, w'].
  """
  num_cols = tf.shape(col_mask)[0]
  cols = tf.range(num_cols)
  gain = col_mask * irfft_weights(num_cols, out_width)  # [c]
  fwd_phase = _phase(tf.range(in_width), cols, in_width)  # [W, c]
  inv_phase = _phase(cols, tf.range(out_width), out_width)  # [c, w']
  fwd_re = tf.cos(fwd_phase) * gain[None, :]
  fwd_im = -tf.sin(fwd_phase) * gain[None, :]
  inv_re, inv_im = tf.cos(inv_phase), tf.sin(inv_phase)
  b_re = tf.matmul(fwd_re, inv_re) - tf.matmul(fwd_im, inv_im)
  b_im = tf.matmul(fwd_re, inv_im) + tf.matmul(fwd_im, inv_re)
  return b_re, b_im


def fft_spectral_crop(x: tf.Tensor, kept_rows: tf.Tensor, row_mask: tf.Tensor,
                      col_mask: tf.Tensor, out_height, out_width,
                      channels_first: bool) -> tf.Tensor:
  """The same operator through `tf.signal` (rfft2d, mask, crop, irfft2d).

  Args as in `row_operator` / `column_operator`; x as in `apply_split`.
  """
  if not channels_first:
    x = tf.transpose(x, (0, 3, 1, 2))
  spec = tf.signal.rfft2d(x)
  num_cols = tf.shape(col_mask)[0]
  spec = tf.gather(spec[..., :num_cols], kept_rows, axis=2)
  mask = tf.complex(row_mask[:, None] * col_mask[None, :], 0.0)
  y = tf.signal.irfft2d(spec * mask, fft_length=tf.stack(
      [out_height, out_width]))
  if not channels_first:
    y = tf.transpose(y, (0, 2, 3, 1))
  return y
