"""The spectral crop ``irfft2d(crop(mask * rfft2d(x)))``, in `keras.ops`.

One implementation for every backend and compilation mode. Its operands
(`diffstride.dft.CropConstants`) are float32 tensors: NumPy constants when
the output size is known when the computation is traced (eager code, XLA,
JAX, PyTorch, exports), or tensors computed on the host at run time in a
TensorFlow graph without XLA (`diffstride.sizes`); every shape below is read
from them (`_dim`), so both work unchanged. The masks' values come from the
stride tensor and carry its gradient.

Two implementations of the same operator (`implementation=`):

  * matmul (`spectral_crop`): y = Re(A x B) as two real matmuls per layer,
    ``t = x cols^T`` (contracting the width) and ``y = rows t`` (contracting
    the interleaved rows), with

        rows = (P_re diag(m_r)) Q1 - (P_im diag(m_r)) Q2          [h', 2H]
        cols = (G1 diag(g)) F_re + (G2 diag(g)) F_im              [2w', W]

    and a hand-written gradient (`backend.use_custom_gradient`): dx is the
    adjoint; the row mask's gradient comes from g = sum over maps of dy t^T;
    the column mask's only over the K kept columns that can lie on the mask's
    ramp, from thin projections of dt and x, instead of the full [2w', W]
    reduction that automatic differentiation would do. No transpose in
    either data format.
  * fft (`fft_spectral_crop`): rFFT along the width, the kept columns times
    their mask, the row operator A (a small complex matmul), the inverse rFFT
    of length w'; O(H W log W) for large maps. Automatic gradients.

DCT-DiffStride's crop (`dct_crop`) is the same two-matmul contraction with
the real DCT operators of `diffstride.dct` (operands `dct.DCTConstants`).

Shapes: B batch, C channels, H x W input, h' x w' output, c kept rFFT
columns, K of them on the ramp.
"""

from typing import Optional

from keras import ops

from diffstride import backend
from diffstride import dct
from diffstride import dft


def _dim(t, axis: int):
  """t.shape[axis]: a Python int where static, else a scalar tensor."""
  size = t.shape[axis]
  return size if size is not None else ops.shape(t)[axis]


def operands(constants):
  """The NumPy constants of a crop (`dft.CropConstants` or
  `dct.DCTConstants`) as tensors, in the same namedtuple (a no-op on
  tensors)."""
  return type(constants)(*(ops.convert_to_tensor(a) for a in constants))


def _operators(row_mask, col_mask, k: dft.CropConstants):
  """rows [h', 2H] and cols [2w', W] for the masks' current values."""
  rows = (ops.matmul(k.p_re * row_mask[None, :], k.q1)
          - ops.matmul(k.p_im * row_mask[None, :], k.q2))
  gain = col_mask * k.col_weights
  cols = (ops.matmul(k.g1 * gain[None, :], k.f_re)
          + ops.matmul(k.g2 * gain[None, :], k.f_im))
  return rows, cols


class _Layout:
  """The contractions of the separable operator for one data format, as
  plain or broadcast-batched matmuls over reshapes (no transpose).

  Flat layouts: `along_width` gives [B H, K, C] (channels_last) or
  [B C H, K] (channels_first); `rows_view` reads a tensor whose rows are
  (row, part) pairs as [B, L, w' C] or [B C, L, w'].
  """

  def __init__(self, x, channels_first: bool):
    self.cf = channels_first
    self.chans = _dim(x, 1 if channels_first else 3)
    self.batch = -1 if x.shape[0] is None else x.shape[0]

  def along_width(self, x, mat, adjoint: bool = False):
    """Contracts x's width (or dt's 2w' axis if `adjoint`) with mat [K, W]
    (its transpose if `adjoint`)."""
    n_in = _dim(mat, 0 if adjoint else 1)
    if self.cf:
      return ops.matmul(ops.reshape(x, (-1, n_in)),
                        mat if adjoint else ops.transpose(mat))
    x = ops.reshape(x, (-1, n_in, self.chans))
    return ops.matmul(ops.transpose(mat) if adjoint else mat, x)

  def rows_view(self, t, num_rows, width):
    if self.cf:
      return ops.reshape(t, (-1, num_rows, width))
    return ops.reshape(t, (-1, num_rows, width * self.chans))

  def output(self, y, height, width):
    if self.cf:
      return ops.reshape(y, (self.batch, self.chans, height, width))
    return ops.reshape(y, (self.batch, height, width, self.chans))


def spectral_crop(x, row_mask, col_mask, k: dft.CropConstants,
                  channels_first: bool,
                  custom_gradient: Optional[bool] = None):
  """irfft2d(crop(mask * rfft2d(x))) as two matmuls.

  Args:
    x: float32 [B, H, W, C] (channels_last) or [B, C, H, W].
    row_mask: float32 [h'] mask of the kept rows.
    col_mask: float32 [c] mask of rFFT columns 0 .. c-1.
    k: the crop's operands (`operands(dft.crop_constants(...))`).
    channels_first: layout of x and of the result.
    custom_gradient: hand-written gradient (default
      `backend.use_custom_gradient()`); False for fixed masks.

  Returns:
    float32 [B, h', w', C] or [B, C, h', w'].
  """
  if custom_gradient is None:
    custom_gradient = backend.use_custom_gradient()
  layout = _Layout(x, channels_first)
  out_h, two_out_w = _dim(k.p_re, 0), _dim(k.g1, 0)
  out_w = two_out_w // 2
  two_h = _dim(k.q1, 1)

  def forward(x, row_mask, col_mask):
    rows, cols = _operators(row_mask, col_mask, k)
    t = layout.along_width(x, cols)  # [.., H, 2w', ..]
    y = ops.matmul(rows, layout.rows_view(t, two_h, out_w))
    return rows, cols, t, layout.output(y, out_h, out_w)

  if not custom_gradient:
    return forward(x, row_mask, col_mask)[-1]

  @ops.custom_gradient
  def crop(x, row_mask, col_mask):
    rows, cols, t, y = forward(x, row_mask, col_mask)

    def grad(*args, upstream=None):
      dy = args[0] if upstream is None else upstream
      dy_v = layout.rows_view(dy, out_h, out_w)  # [.., h', w'(C)]
      t_v = layout.rows_view(t, two_h, out_w)  # [.., 2H, w'(C)]
      dt = ops.matmul(ops.transpose(rows), dy_v)  # [.., 2H, w'(C)]
      dx = ops.reshape(layout.along_width(dt, cols, adjoint=True),
                       ops.shape(x))
      # Row mask: g = sum over maps of dy t^T, then the small bases.
      g = ops.sum(ops.matmul(dy_v, ops.transpose(t_v, (0, 2, 1))), axis=0)
      d_rows = (ops.sum(ops.matmul(ops.transpose(k.p_re), g) * k.q1, axis=1)
                - ops.sum(ops.matmul(ops.transpose(k.p_im), g) * k.q2,
                          axis=1))
      # Column mask, on the ramp columns only: d gain_l = sum over maps and
      # rows of (dt . G[:, l]) (x . F[l, :]) for both parts.
      v = layout.along_width(dt, k.v_cols)  # [B C H, 2K] or [B H, 2K, C]
      s = layout.along_width(x, k.s_cols)
      prod = v * s
      if not channels_first:
        prod = ops.sum(prod, axis=2)
      prod = ops.sum(prod, axis=0)  # [2K] ordered (part, l)
      d_gain = ops.sum(ops.reshape(prod, (2, -1)), axis=0)  # [K]
      d_cols = ops.matmul(d_gain[None, :], k.ramp_scatter)[0]  # [c]
      return dx, d_rows, d_cols

    return y, grad

  return crop(x, row_mask, col_mask)


def dct_crop(x, row_mask, col_mask, k: dct.DCTConstants,
             channels_first: bool):
  """The DCT crop of DCT-DiffStride: per map, y = A_h x A_w^T with
  A = C3_M diag(m) C2_{M x N} per axis (`diffstride.dct`), as two matmuls
  over reshapes (no transpose). Automatic gradients.

  Args:
    x: float32 [B, H, W, C] (channels_last) or [B, C, H, W].
    row_mask: float32 [h'] mask of the kept DCT rows.
    col_mask: float32 [w'] mask of the kept DCT columns.
    k: the crop's operands (`operands(dct.crop_constants(...))`).
    channels_first: layout of x and of the result.

  Returns:
    float32 [B, h', w', C] or [B, C, h', w'].
  """
  a_h = ops.matmul(k.row_inverse * row_mask[None, :], k.row_forward)
  a_w = ops.matmul(k.col_inverse * col_mask[None, :], k.col_forward)
  layout = _Layout(x, channels_first)
  out_h, out_w = _dim(a_h, 0), _dim(a_w, 0)
  t = layout.along_width(x, a_w)  # [.., H, w', ..]
  y = ops.matmul(a_h, layout.rows_view(t, _dim(a_h, 1), out_w))
  return layout.output(y, out_h, out_w)


def row_operator(row_mask, k: dft.CropConstants):
  """Re and Im of A = P diag(row_mask) Q: float32 [h', H] each."""
  p_re, p_im = k.p_re * row_mask[None, :], k.p_im * row_mask[None, :]
  return (ops.matmul(p_re, k.q_re) - ops.matmul(p_im, k.q_im),
          ops.matmul(p_re, k.q_im) + ops.matmul(p_im, k.q_re))


def _to_channels_first(x, channels_first: bool, rank: int):
  if channels_first:
    return x
  return ops.transpose(x, (0, rank - 1) + tuple(range(1, rank - 1)))


def _from_channels_first(y, channels_first: bool, rank: int):
  if channels_first:
    return y
  return ops.transpose(y, (0,) + tuple(range(2, rank)) + (1,))


def _masked_rfft(x, col_mask, num_cols):
  """The first c rFFT bins of x along its last axis, times col_mask."""
  re, im = ops.rfft(x)
  return re[..., :num_cols] * col_mask, im[..., :num_cols] * col_mask


def fft_spectral_crop(x, row_mask, col_mask, k: dft.CropConstants,
                      channels_first: bool):
  """The same operator as `spectral_crop` through `keras.ops.rfft` / `irfft`
  along the width and the row operator A along the height.

  Args and result as in `spectral_crop`.
  """
  x = _to_channels_first(x, channels_first, 4)  # [B, C, H, W]
  re, im = _masked_rfft(x, col_mask, _dim(k.col_weights, 0))  # [B, C, H, c]
  a_re, a_im = row_operator(row_mask, k)
  z_re = ops.matmul(a_re, re) - ops.matmul(a_im, im)  # [B, C, h', c]
  z_im = ops.matmul(a_re, im) + ops.matmul(a_im, re)
  y = ops.irfft((z_re, z_im), fft_length=_dim(k.g1, 0) // 2)
  return _from_channels_first(y, channels_first, 4)


def axis_crop(x, col_mask, k: dft.CropConstants, channels_first: bool,
              use_fft: bool):
  """irfft(crop(mask * rfft(x)), T') along the length of a 1-D signal.

  Args:
    x: float32 [B, T, C] (channels_last) or [B, C, T].
    col_mask: float32 [c] mask of rFFT bins 0 .. c-1.
    k: operands of `dft.axis_constants(T, c, T')`.
    channels_first: layout of x and of the result.
    use_fft: `keras.ops.rfft` / `irfft` rather than the dense [T', T]
      operator (for long signals).

  Returns:
    float32 [B, T', C] or [B, C, T'].
  """
  out_length = _dim(k.g1, 0) // 2
  if use_fft:
    x = _to_channels_first(x, channels_first, 3)
    re, im = _masked_rfft(x, col_mask, _dim(k.col_weights, 0))
    y = ops.irfft((re, im), fft_length=out_length)
    return _from_channels_first(y, channels_first, 3)
  gain = col_mask * k.col_weights
  operator = (ops.matmul(k.g1[:out_length] * gain[None, :], k.f_re)
              + ops.matmul(k.g2[:out_length] * gain[None, :], k.f_im))
  if channels_first:
    length = _dim(x, 2)
    y = ops.matmul(ops.reshape(x, (-1, length)), ops.transpose(operator))
    batch = -1 if x.shape[0] is None else x.shape[0]
    return ops.reshape(y, (batch, _dim(x, 1), out_length))
  return ops.matmul(operator, x)  # [T', T] @ [B, T, C]
