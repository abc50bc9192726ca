"""Spectral cropping as separable real linear operators.

The DiffStride family of layers computes, per channel, ``irfft2d(crop(mask *
rfft2d(x)))``. For fixed masks this is linear in ``x`` and separable over the two
spatial axes, so for a single (H, W) channel ``x``::

    y = Re(A x B) = Ar x Br - Ai x Bi

where ``A`` (h' x H) is the inverse DFT of length h' composed with the masked,
row-cropped forward DFT, and ``B`` (W x w') is the masked, column-cropped forward
rFFT composed with the inverse rFFT of length w'. Building A and B costs
O(h'^2 H + W c w'); no complex dtype and no `tf.signal` call is involved.

Layout (`_Layout`): the forward pass is two matmuls and no transpose. First
``t = x [Br | Bi]`` contracts the width axis, giving per map an H x 2w' array
that, read as 2H x w', interleaves the real and imaginary parts row by row;
then one [h', 2H] matrix with interleaved columns (Ar, -Ai) contracts it into
y. For channels_last both are broadcast-batched matmuls over reshapes of the
tensor ([B H] batches of [2w', W] @ [W, C], then B batches of [h', 2H] @
[2H, w' C]); for channels_first the first is one plain GEMM.

Gradients (`spectral_crop`): dx is the adjoint, the same two matmuls
transposed. The masks' gradients avoid the large reductions automatic
differentiation would do through the operators: the row masks need one GEMM
per batch element with a long reduction (sum of dy t^T), the column masks
only the few ramp frequencies (x f_l, and dy g_l); `MaskGradients` holds the
small operands and turns those two reductions into the masks' gradients.

Measured with benchmarks/layer_benchmark.py against the FFT pipeline with
automatic gradients; see the README. The FFT path (`fft_spectral_crop`)
computes the same thing with `tf.signal` and is kept for large maps, where
O(HW log HW) beats the dense operators.

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


def ramp_has_gradient(threshold: tf.Tensor, smoothness: float,
                      positions: tf.Tensor) -> tf.Tensor:
  """bool[N]: where `adaptive_span_mask`'s value has a non-zero derivative.

  That is 0 <= (R + t - n) / R <= 1, inclusive at both ends like the gradient
  of `tf.clip_by_value`; the result is under `stop_gradient`.
  """
  value = (1.0 / smoothness) * (smoothness + threshold - positions)
  return tf.stop_gradient(tf.logical_and(value >= 0.0, value <= 1.0))


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


def _row_bases(kept_rows: tf.Tensor, in_height):
  """The two DFTs that make up the row operator A = P diag(mask) Q.

  Args:
    kept_rows: int[h'] indices of the rFFT rows kept, in output order.
    in_height: H.

  Returns:
    (p_re, p_im float32[h', h']): the inverse DFT of length h', scaled by
    1/h'; (q_re, q_im float32[h', H]): the forward DFT rows `kept_rows`.
  """
  out_height = tf.shape(kept_rows)[0]
  j = tf.range(out_height)
  inv_phase = _phase(j, j, out_height)  # [h', h'] (j, j')
  scale = 1.0 / tf.cast(out_height, tf.float32)
  fwd_phase = _phase(kept_rows, tf.range(in_height), in_height)  # [h', H]
  return (tf.cos(inv_phase) * scale, tf.sin(inv_phase) * scale,
          tf.cos(fwd_phase), -tf.sin(fwd_phase))


def row_operator(kept_rows: tf.Tensor, row_mask: tf.Tensor,
                 in_height) -> Tuple[tf.Tensor, tf.Tensor]:
  """Real and imaginary parts of A = IDFT_h' diag(mask) DFT_H[kept_rows].

  Args:
    kept_rows: int[h'] indices of the rFFT rows kept, in output order.
    row_mask: float32[h'] mask value of each kept row.
    in_height: H.

  Returns:
    (Ar, Ai), each float32[h', H].
  """
  return _masked_product(_row_bases(kept_rows, in_height), row_mask)


def _masked_product(bases, weights: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Re and Im of (L diag(weights)) R for complex L = (l_re, l_im) [M, K] and
  R = (r_re, r_im) [K, N], given bases = (l_re, l_im, r_re, r_im)."""
  l_re, l_im, r_re, r_im = bases
  l_re, l_im = l_re * weights[None, :], l_im * weights[None, :]
  return (tf.matmul(l_re, r_re) - tf.matmul(l_im, r_im),
          tf.matmul(l_re, r_im) + tf.matmul(l_im, r_re))


def _column_bases(num_cols, in_width, out_width):
  """The two real DFTs that make up B = F diag(weights) G.

  Returns:
    (f_re, f_im float32[W, c]): the forward rFFT columns 0..c-1 of length W;
    (g_re, g_im float32[c, w']): the inverse rFFT of length w' (without its
    bin weights, see `irfft_weights`).
  """
  cols = tf.range(num_cols)
  fwd_phase = _phase(tf.range(in_width), cols, in_width)  # [W, c]
  inv_phase = _phase(cols, tf.range(out_width), out_width)  # [c, w']
  return (tf.cos(fwd_phase), -tf.sin(fwd_phase), tf.cos(inv_phase),
          tf.sin(inv_phase))


def column_operator(col_mask: tf.Tensor, in_width,
                    out_width) -> Tuple[tf.Tensor, tf.Tensor]:
  """Real and imaginary parts of B = rDFT_W[:, :c] diag(mask) irDFT_w'.

  Args:
    col_mask: float32[c] mask of the first c rFFT columns.
    in_width: W.
    out_width: w', the inverse rFFT length.

  Returns:
    (Br, Bi), each float32[W, w'].
  """
  num_cols = tf.shape(col_mask)[0]
  gain = col_mask * irfft_weights(num_cols, out_width)  # [c]
  return _masked_product(_column_bases(num_cols, in_width, out_width), gain)


def _interleave_columns(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  """[K, L] and [K, L] -> [K, 2L] with columns first[:, 0], second[:, 0], ..."""
  return tf.reshape(tf.stack([first, second], axis=-1),
                    [tf.shape(first)[0], -1])


class _Layout:
  """The two contractions of the separable operator for one data format.

  Both are plain or broadcast-batched matmuls over a reshape of the tensor, so
  no transpose is ever needed:

  * `along_width(t, mat)` contracts the width axis of t with mat[K, W]:
    [B, H, W, C] -> [B, H, K, C] (channels_last) or
    [B, C, H, W] -> [B, C, H, K] (channels_first).
  * `along_rows(t, mat)` contracts the (row, part) axes of a tensor laid out
    as [B, H, 2, w', C] (channels_last) or [B, C, H, 2, w'] (channels_first),
    i.e. the output of `along_width` with a [2w', W] matrix, with mat[K, 2H]
    whose columns are interleaved (row, part): -> [B, K, w', C] or
    [B, C, K, w'].
  """

  def __init__(self, x: tf.Tensor, channels_first: bool):
    shape = tf.shape(x)
    self.channels_first = channels_first
    if channels_first:
      self.batch, self.chans = shape[0], shape[1]
      self.height, self.width = shape[2], shape[3]
    else:
      self.batch, self.height = shape[0], shape[1]
      self.width, self.chans = shape[2], shape[3]

  def along_width(self, t: tf.Tensor, mat: tf.Tensor,
                  adjoint: bool = False) -> tf.Tensor:
    """Contracts the width axis with mat[K, W] (mat[W, K] if `adjoint`)."""
    num_out = tf.shape(mat)[1 if adjoint else 0]
    num_in = tf.shape(mat)[0 if adjoint else 1]
    if self.channels_first:
      out = tf.matmul(tf.reshape(t, [-1, num_in]), mat,
                      transpose_b=not adjoint)
      return tf.reshape(out, [self.batch, self.chans, -1, num_out])
    out = tf.matmul(mat, tf.reshape(t, [-1, num_in, self.chans]),
                    transpose_a=adjoint)
    return tf.reshape(out, [self.batch, -1, num_out, self.chans])

  def rows_view(self, t: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """[B, L, w' C] (channels_last) or [B C, L, w'] view of a rows tensor."""
    if self.channels_first:
      return tf.reshape(t, [self.batch * self.chans, -1, width])
    return tf.reshape(t, [self.batch, -1, width * self.chans])

  def along_rows(self, t: tf.Tensor, mat: tf.Tensor, width: tf.Tensor,
                 adjoint: bool = False) -> tf.Tensor:
    """Contracts the (row, part) axes with mat[K, L] (mat[L, K] if adjoint)."""
    num_out = tf.shape(mat)[1 if adjoint else 0]
    num_in = tf.shape(mat)[0 if adjoint else 1]
    if self.channels_first:
      out = tf.matmul(mat, tf.reshape(t, [-1, num_in, width]),
                      transpose_a=adjoint)
      return tf.reshape(out, [self.batch, self.chans, num_out, width])
    out = tf.matmul(mat, tf.reshape(t, [self.batch, num_in, -1]),
                    transpose_a=adjoint)
    return tf.reshape(out, [self.batch, num_out, width, self.chans])


def separable_matrices(a_re, a_im, b_re, b_im):
  """The two real matrices the forward pass applies.

  Returns:
    (rows float32[h', 2H], cols float32[2w', W]): y = Re(A x B) is
    `along_rows(along_width(x, cols), rows)`.
  """
  rows = _interleave_columns(a_re, -a_im)
  cols = tf.transpose(tf.concat([b_re, b_im], axis=1))
  return rows, cols


def apply_separable(x: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor,
                    channels_first: bool) -> tf.Tensor:
  """y = Re(A x B) per (batch, channel) map, from `separable_matrices`.

  Args:
    x: float32[B, H, W, C] (channels_last) or [B, C, H, W].
    rows: float32[h', 2H]; cols: float32[2w', W].

  Returns:
    float32[B, h', w', C] or [B, C, h', w'].
  """
  layout = _Layout(x, channels_first)
  out_width = tf.shape(cols)[0] // 2
  return layout.along_rows(layout.along_width(x, cols), rows, out_width)


def _pairs(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  """[K, L] and [K, L] -> [2K, L] with rows first[0], second[0], first[1], ..."""
  return tf.reshape(tf.stack([first, second], axis=1),
                    [-1, tf.shape(first)[1]])


class MaskGradients:
  """The small operands of the masks' gradients, and how to finish them.

  The masks enter the operators one rank-2 term per frequency (A = sum_j m_j
  p_j q_j^T over kept rows, B = sum_l w_l f_l g_l^T over kept columns), so
  the gradient of each mask value is an inner product of two thin
  projections. Only frequencies flagged in `row_has_grad` / `col_has_grad`
  (where the mask depends on the strides) get one; elsewhere the gradient is
  0, which is exact where the mask's own derivative in the strides is 0.

  Given the two reductions over the batch that need the large tensors,

  * g = sum over maps of dy t^T, float32[h', 2H] (t: the forward
    intermediate, see `_Layout`), and
  * col_prod = sum over maps, output rows and channels of u * v,
    float32[2K] ordered (part, l), where s = `along_width(x, f_cols)`,
    u = `along_rows(s, u_rows, K)` and v = `along_width(dy, g_cols)`,

  `row_mask_grad(g)` and `col_mask_grad(col_prod)` return the masks'
  gradients; `spectral_crop` computes the two reductions.
  """

  def __init__(self, row_bases, col_bases, col_weights, rows, a_re, a_im,
               row_has_grad, col_has_grad):
    p_re, p_im, q_re, q_im = row_bases
    f_re, f_im, g_re, g_im = col_bases
    self._col_weights = col_weights
    self._rows_shape = tf.shape(row_has_grad, tf.int64)
    self._cols_shape = tf.shape(col_has_grad, tf.int64)
    # Rows: dL/dm_j = <p_j^T dy, q_j^T t> = sum(p_rows g * q_rows), paired.
    self.row_index = tf.where(row_has_grad)[:, 0]
    j = self.row_index
    self.p_rows = _pairs(tf.transpose(tf.gather(p_re, j, axis=1)),
                         -tf.transpose(tf.gather(p_im, j, axis=1)))  # [2J, h']
    qj_re, qj_im = tf.gather(q_re, j), tf.gather(q_im, j)  # [J, H]
    self.q_rows = _pairs(_interleave_columns(qj_re, -qj_im),
                         _interleave_columns(qj_im, qj_re))  # [2J, 2H]
    # Columns: with u_l = A x f_l (complex h'-vector per map) and
    # v_l = dy g_l, dL/dw_l = <Re u_l, Re v_l> - <Im u_l, Im v_l>.
    self.col_index = tf.where(col_has_grad)[:, 0]
    l = self.col_index
    self.f_cols = tf.concat([tf.transpose(tf.gather(f_re, l, axis=1)),
                             tf.transpose(tf.gather(f_im, l, axis=1))],
                            axis=0)  # [2K, W]: (part, l)
    self.g_cols = tf.concat([tf.gather(g_re, l), tf.gather(g_im, l)],
                            axis=0)  # [2K, w']: (part, l)
    self.u_rows = _pairs(rows, _interleave_columns(a_im, a_re))  # [2h', 2H]
    self.num_ramp_cols = tf.size(l)

  def row_mask_grad(self, g: tf.Tensor) -> tf.Tensor:
    """float32[h'] gradient of the row mask from g = sum dy t^T [h', 2H]."""
    d_rows = tf.reduce_sum(
        tf.reshape(tf.reduce_sum(tf.matmul(self.p_rows, g) * self.q_rows,
                                 axis=1), [-1, 2]), axis=1)
    return tf.scatter_nd(self.row_index[:, None], d_rows, self._rows_shape)

  def col_mask_grad(self, col_prod: tf.Tensor) -> tf.Tensor:
    """float32[c] gradient of the column mask from col_prod [2K]."""
    per_part = tf.reshape(col_prod, [2, -1])
    d_cols = per_part[0] - per_part[1]
    return tf.scatter_nd(
        self.col_index[:, None],
        d_cols * tf.gather(self._col_weights, self.col_index),
        self._cols_shape)


def spectral_crop(x: tf.Tensor, kept_rows: tf.Tensor, row_mask: tf.Tensor,
                  row_has_grad: tf.Tensor, col_mask: tf.Tensor,
                  col_has_grad: tf.Tensor, out_width,
                  channels_first: bool) -> tf.Tensor:
  """irfft2d(crop(mask * rfft2d(x))) as two matmuls, with a hand-made gradient.

  The forward pass is `apply_separable`. The backward pass applies the adjoint
  operator to dy for dx, and gets the masks' gradients (`MaskGradients`)
  without the large reductions that automatic differentiation of the matmuls
  would do (those contract x and dy over every batch element and channel into
  whole h' x 2H and 2w' x W matrices).

  Args:
    x: float32[B, H, W, C] (channels_last) or [B, C, H, W].
    kept_rows: int[h'] rFFT rows kept, in output order.
    row_mask: float32[h'] their mask values.
    row_has_grad: bool[h'] rows whose mask depends on the strides.
    col_mask: float32[c] mask of rFFT columns 0..c-1.
    col_has_grad: bool[c] columns whose mask depends on the strides.
    out_width: w', the inverse rFFT length.
    channels_first: the layout of x (and of the result).

  Returns:
    float32[B, h', w', C] or [B, C, h', w'].
  """
  layout = _Layout(x, channels_first)
  height, width = layout.height, layout.width
  num_cols = tf.shape(col_mask)[0]
  row_bases = _row_bases(kept_rows, height)
  col_bases = _column_bases(num_cols, width, out_width)
  col_weights = irfft_weights(num_cols, out_width)
  # What follows the K axis in `along_width` outputs.
  inner_cols = 1 if channels_first else layout.chans

  @tf.custom_gradient
  def crop(x, row_mask, col_mask):
    a_re, a_im = _masked_product(row_bases, row_mask)
    b_re, b_im = _masked_product(col_bases, col_mask * col_weights)
    rows, cols = separable_matrices(a_re, a_im, b_re, b_im)
    t = layout.along_width(x, cols)  # [.., H, 2w', ..]
    y = layout.along_rows(t, rows, out_width)

    def grad(dy):
      dt = layout.along_rows(dy, rows, out_width, adjoint=True)
      dx = layout.along_width(dt, cols, adjoint=True)
      masks = MaskGradients(row_bases, col_bases, col_weights, rows, a_re,
                            a_im, row_has_grad, col_has_grad)
      # sum over maps of dy t^T: one GEMM per batch element (or map) with a
      # long reduction.
      g = tf.reduce_sum(
          tf.matmul(layout.rows_view(dy, out_width),
                    layout.rows_view(t, out_width), transpose_b=True),
          axis=0)  # [h', 2H]
      num_k = masks.num_ramp_cols
      s = layout.along_width(x, masks.f_cols)  # [.., H, 2, K, ..]
      u = layout.along_rows(s, masks.u_rows, num_k)  # [.., h', 2, K, ..]
      v = layout.along_width(dy, masks.g_cols)  # [.., h', 2, K, ..]
      # Reshaped so that the reduced axes are contiguous: TensorFlow reduces
      # over non-adjacent axes several times slower.
      prod = tf.reshape(tf.reshape(u, tf.shape(v)) * v,
                        [-1, 2 * num_k, inner_cols])
      col_prod = tf.reduce_sum(tf.reduce_sum(prod, axis=2), axis=0)
      return dx, masks.row_mask_grad(g), masks.col_mask_grad(col_prod)

    return y, grad

  return crop(x, row_mask, col_mask)


def fft_spectral_crop(x: tf.Tensor, kept_rows: tf.Tensor, row_mask: tf.Tensor,
                      col_mask: tf.Tensor, out_height, out_width,
                      channels_first: bool) -> tf.Tensor:
  """The same operator through `tf.signal` (rfft2d, mask, crop, irfft2d).

  Args as in `row_operator` / `column_operator`; x as in `apply_separable`.
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
