"""Spectral cropping with static shapes, in `keras.ops`: any backend, XLA, jit.

The TensorFlow implementation in `diffstride.spectral` finds the kept rFFT
rows and columns in the graph (data-dependent shapes: exact with no host
round trip, but no XLA). Here the kept rows and columns are Python integers
(resolved on the host from the strides' values, see `diffstride.sizes`), so
every operand that depends only on them is a NumPy constant and every shape is
static: the same code runs on TensorFlow (under XLA and in SavedModels), JAX
(`jax.jit`) and PyTorch. The masks' VALUES are still computed from the stride
tensor, so the strides get exactly the gradient of the dynamic version.

The operator is that of `diffstride.spectral` (see its docstring): for fixed
masks, y = Re(A x B) per (batch, channel) map, applied as two real matmuls
``t = x cols^T`` (contracting the width) and ``y = rows t`` (contracting the
interleaved rows). With the bases as constants, the operators are

    rows = (P_re diag(m_r)) Q1 - (P_im diag(m_r)) Q2              [h', 2H]
    cols = (G1 diag(g)) F_re + (G2 diag(g)) F_im                  [2w', W]

(m_r the kept rows' mask, g the kept columns' mask times the inverse-rFFT bin
weights), two small matmuls each. `spectral_crop` gives them a hand-written
gradient (`keras.ops.custom_gradient`): dx is the adjoint; the row mask's
gradient comes from g = sum over maps of dy t^T (one GEMM, as automatic
differentiation would do); the column mask's gradient only over the kept
columns that can lie on the mask's ramp (the last ceil(R) + 2), from thin
projections of dt and x, instead of the full [2w', W] reduction automatic
differentiation would do.

Shapes: B batch, C channels, H x W input, h' x w' output, c kept rFFT columns.
"""

import collections
import functools
import math
from typing import Optional, Tuple

import keras
from keras import ops
import numpy as np

# Hand-written gradient for the static path: True, False (automatic
# differentiation of the forward matmuls) or None: automatic differentiation
# under XLA (JAX jit, TensorFlow XLA: the plainer program for XLA to fuse),
# the hand-written gradient elsewhere (PyTorch; TensorFlow static graphs,
# i.e. exports). Measured with benchmarks/backend_benchmark.py (ResNet-18
# CIFAR training step, 2 shared CPU cores), autodiff / hand-written: JAX jit
# 0.77x, 1.02x and 1.01x, TensorFlow XLA 1.02x, 0.91x and 1.00x in three runs
# (no difference beyond the machine's noise); eager PyTorch 1.6x (the layer
# alone, forward + backward).
CUSTOM_GRADIENT = None


def _use_custom_gradient() -> bool:
  if CUSTOM_GRADIENT is not None:
    return bool(CUSTOM_GRADIENT)
  name = backend()
  if name == 'jax':
    return False
  if name == 'tensorflow':
    return not tf_in_xla_context()
  return True


def backend() -> str:
  return keras.backend.backend()


# ------------------------------------------------------------ host / tracing


def concrete_value(value) -> Optional[np.ndarray]:
  """`value` as a NumPy array when it is known on the host now, else None.

  None inside a traced computation: a `tf.function` graph (XLA or not) or a
  `jax.jit` trace (`jax.grad` outside `jit` has concrete values). PyTorch tensors are always concrete (under `torch.compile`
  reading one breaks the graph, which keeps the result exact).
  """
  if isinstance(value, keras.Variable):
    value = value.value
  name = backend()
  if name == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.executing_eagerly():
      return None
    return np.asarray(value)
  if name == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    if isinstance(value, jax.core.Tracer):
      # Differentiation outside `jit` traces concrete values (JAX >= 0.4.36).
      to_concrete = getattr(value, 'to_concrete_value', None)
      value = to_concrete() if to_concrete is not None else None
      if value is None:
        return None
    return np.asarray(value)
  if name == 'torch':
    return value.detach().cpu().numpy()
  return np.asarray(value)


def in_symbolic_scope() -> bool:
  """True while Keras only infers shapes (`compute_output_spec`: no value is
  ever computed). Keras 3.15 exports `keras.SymbolicScope` but not this query,
  hence the private import."""
  try:
    from keras.src.backend.common import symbolic_scope  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - other Keras versions.
    return False
  return bool(symbolic_scope.in_symbolic_scope())


def tf_in_xla_context() -> bool:
  """True while TensorFlow traces a function that XLA will compile
  (`tf.function(jit_compile=True)`, Keras' `jit_compile=True`).

  Uses TensorFlow's private `control_flow_util` (TF 2.16 - 2.21): the public
  API has no such query.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.executing_eagerly():
    return False
  from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  return bool(control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph()))


def _raise_stale(stale, message):
  if bool(np.asarray(stale)):
    raise ValueError(message)


def stale_guard(y, stale, message: str):
  """Makes stale output sizes impossible to miss; returns y.

  `stale` (a boolean scalar tensor) is true when the strides' current value
  gives other output sizes than the ones this computation was traced with.
  Then: JAX raises `message` (from a host callback, only when stale);
  TensorFlow outside XLA raises it (`tf.debugging.Assert`); under XLA, which
  cannot raise, the output becomes NaN. In every case y is also NaN-poisoned,
  so nothing downstream silently uses a wrong-sized result.
  """
  name = backend()
  if name == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    jax.lax.cond(stale,
                 lambda: jax.debug.callback(
                     functools.partial(_raise_stale, message=message), stale),
                 lambda: None)
  elif name == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf_in_xla_context():
      assertion = tf.debugging.Assert(tf.logical_not(stale), [message])
      with tf.control_dependencies([assertion]):
        y = tf.identity(y)
  poison = ops.where(stale, float('nan'), 0.0)
  return y + ops.stop_gradient(ops.cast(poison, y.dtype))


# ------------------------------------------------------------ masks


def clip_with_gradient(value, low, high):
  """clip(value, low, high) whose gradient is 1 on the CLOSED interval
  [low, high] and 0 outside, as `tf.clip_by_value` (JAX's clip would give 1/2
  at the bounds, PyTorch's 1)."""
  inside = ops.logical_and(ops.greater_equal(value, low),
                           ops.less_equal(value, high))
  return ops.where(ops.stop_gradient(inside), value,
                   ops.stop_gradient(ops.clip(value, low, high)))


def at_least(value, floor):
  """max(value, floor) with the gradient to `value` where value >= floor (the
  convention of `tf.maximum(value, floor)`)."""
  return ops.where(ops.stop_gradient(ops.greater_equal(value, floor)), value,
                   ops.stop_gradient(ops.zeros_like(value) + floor))


def raise_to(value, minimum):
  """Straight-through max(value, minimum): the value is raised, the gradient
  flows unchanged (as `pooling.DiffStride` does in TensorFlow)."""
  return value + ops.stop_gradient(ops.maximum(value, minimum) - value)


def constrain(value, lower: float, upper: float):
  """`StrideConstraint` in the forward pass: NaN -> lower, then clipped."""
  value = ops.where(ops.isnan(value), lower, value)
  return clip_with_gradient(value, lower, upper)


def ramp_values(threshold, smoothness: float, positions: np.ndarray):
  """(R + t - n) / R in the official order of operations (float32)."""
  positions = ops.convert_to_tensor(np.asarray(positions, np.float32))
  return (1.0 / smoothness) * ((smoothness + threshold) - positions)


def ramp_mask(threshold, smoothness: float, positions: np.ndarray):
  """The adaptive-span mask clip((R + t - n) / R, 0, 1) at `positions` (host
  constants), differentiable in t with the official convention."""
  return clip_with_gradient(ramp_values(threshold, smoothness, positions),
                            0.0, 1.0)


def count_positive(values):
  return ops.sum(ops.cast(ops.greater(values, 0.0), 'int32'))


# ------------------------------------------------------------ host constants


def _phase(k, n, length):
  """2 pi (k n mod L) / L, float64 [len(k), len(n)], exact integer reduction."""
  prod = np.mod(np.outer(np.asarray(k, np.int64), np.asarray(n, np.int64)),
                length)
  return prod.astype(np.float64) * (2.0 * math.pi / length)


def irfft_weights(num_cols: int, length: int) -> np.ndarray:
  """Weight of rFFT bin l in an inverse rFFT of `length`, / length (see
  `spectral.irfft_weights`)."""
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
    'height', 'width', 'out_height', 'out_width', 'num_cols',
    'p_re', 'p_im', 'q1', 'q2',          # rows operator bases
    'g1', 'g2', 'f_re', 'f_im',          # cols operator bases
    'col_weights',                       # irfft bin weights [c]
    'ramp_cols',                         # kept columns that may be on the ramp
    'v_cols', 's_cols',                  # their projections [2K, 2w'], [2K, W]
])


@functools.lru_cache(maxsize=256)
def crop_constants(height: int, width: int, kept_rows: Tuple[int, ...],
                   num_cols: int, out_width: int,
                   ramp_cols: Tuple[int, ...]) -> CropConstants:
  """The NumPy (float32) operands of `spectral_crop` for one crop.

  Args:
    height, width: H, W of the input.
    kept_rows: indices of the rFFT rows kept, in output order (h' of them).
    num_cols: c, the rFFT columns 0..c-1 kept.
    out_width: w', the inverse rFFT length.
    ramp_cols: the kept columns whose mask may depend on the strides (the
      column mask's gradient is computed there only).
  """
  kept = np.asarray(kept_rows, np.int64)
  out_h = len(kept)
  j = np.arange(out_h)
  inv = _phase(j, j, out_h)  # [h', h']
  p_re, p_im = np.cos(inv) / out_h, np.sin(inv) / out_h
  fwd = _phase(kept, np.arange(height), height)  # [h', H]
  q_re, q_im = np.cos(fwd), -np.sin(fwd)
  q1 = _interleave_columns(q_re, -q_im)
  q2 = _interleave_columns(q_im, q_re)
  cols = np.arange(num_cols)
  f_phase = _phase(np.arange(width), cols, width)  # [W, c]
  f_re, f_im = np.cos(f_phase), -np.sin(f_phase)
  g_phase = _phase(cols, np.arange(out_width), out_width)  # [c, w']
  g_re, g_im = np.cos(g_phase), np.sin(g_phase)
  g1 = np.concatenate([g_re.T, g_im.T], axis=0)  # [2w', c]
  g2 = np.concatenate([-g_im.T, g_re.T], axis=0)  # [2w', c]
  ramp = np.asarray(ramp_cols, np.int64)
  v_cols = np.concatenate([g1[:, ramp].T, g2[:, ramp].T], axis=0)  # [2K, 2w']
  s_cols = np.concatenate([f_re[:, ramp].T, f_im[:, ramp].T], axis=0)  # [2K, W]
  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  return CropConstants(
      height, width, out_h, out_width, num_cols,
      f32(p_re), f32(p_im), f32(q1), f32(q2), f32(g1), f32(g2),
      f32(f_re.T), f32(f_im.T), f32(irfft_weights(num_cols, out_width)),
      ramp, f32(v_cols), f32(s_cols))


def ramp_superset(num_cols: int, smoothness: float, cropping: bool):
  """The kept columns whose mask value may have a non-zero stride derivative.

  With cropping, the kept columns are n < R + t and the ramp is t <= n <= R + t,
  so only n > c - 1 - R can be on it; a margin of one column covers float32
  rounding. Without cropping the ramp may be anywhere.
  """
  if not cropping:
    return tuple(range(num_cols))
  # Always a run of columns ending at c - 1 (`spectral_crop` relies on it).
  first = max(0, num_cols - 2 - int(math.ceil(smoothness)))
  return tuple(range(first, num_cols))


# ------------------------------------------------------------ the operator


def _operators(row_mask, col_mask, k: CropConstants):
  c = lambda a: ops.convert_to_tensor(a)
  rows = (ops.matmul(c(k.p_re) * row_mask[None, :], c(k.q1))
          - ops.matmul(c(k.p_im) * row_mask[None, :], c(k.q2)))  # [h', 2H]
  gain = col_mask * c(k.col_weights)
  cols = (ops.matmul(c(k.g1) * gain[None, :], c(k.f_re))
          + ops.matmul(c(k.g2) * gain[None, :], c(k.f_im)))  # [2w', W]
  return rows, cols


class _Layout:
  """Static-shape versions of `spectral._Layout`'s contractions."""

  def __init__(self, shape, channels_first: bool, k: CropConstants):
    self.cf = channels_first
    if channels_first:
      self.batch, self.chans = shape[0], shape[1]
    else:
      self.batch, self.chans = shape[0], shape[3]
    self.k = k

  def _batch(self):
    # -1 keeps an unknown batch size working (symbolic shapes).
    return -1 if self.batch is None else self.batch

  def along_width(self, x, mat, adjoint=False):
    """x [.., H, W, ..] (or dt [.., H, 2w', ..] if adjoint) -> contracted
    with mat [K, W] (its transpose if adjoint); flat layouts:
    channels_last [B H, K, C], channels_first [B C H, K]."""
    if self.cf:
      n_in = mat.shape[0] if adjoint else mat.shape[1]
      x = ops.reshape(x, (-1, n_in))
      return ops.matmul(x, mat if adjoint else ops.transpose(mat))
    n_in = mat.shape[0] if adjoint else mat.shape[1]
    x = ops.reshape(x, (-1, n_in, self.chans))
    return ops.matmul(ops.transpose(mat) if adjoint else mat, x)

  def along_rows(self, t, mat, width, adjoint=False):
    """Contracts the (row, part) axes of t with mat [h', 2H] (its transpose
    if adjoint): [B, h', w' C] (channels_last) or [B C, h', w']."""
    mat = ops.transpose(mat) if adjoint else mat
    if self.cf:
      t = ops.reshape(t, (-1, mat.shape[1], width))
    else:
      t = ops.reshape(t, (self._batch(), mat.shape[1], width * self.chans))
    return ops.matmul(mat, t)

  def output(self, y):
    k = self.k
    if self.cf:
      return ops.reshape(y, (self._batch(), self.chans, k.out_height,
                             k.out_width))
    return ops.reshape(y, (self._batch(), k.out_height, k.out_width,
                           self.chans))

  def input_like(self, dx):
    k = self.k
    if self.cf:
      return ops.reshape(dx, (self._batch(), self.chans, k.height, k.width))
    return ops.reshape(dx, (self._batch(), k.height, k.width, self.chans))


def _forward(x, rows, cols, layout: _Layout):
  k = layout.k
  t = layout.along_width(x, cols)  # [.., H, 2w', ..]
  y = layout.along_rows(t, rows, k.out_width)  # [B(C), h', w'(C)]
  return t, y


def spectral_crop(x, row_mask, col_mask, k: CropConstants,
                  channels_first: bool, custom_gradient: Optional[bool] = None):
  """irfft2d(crop(mask * rfft2d(x))) with static shapes.

  Args:
    x: float32 [B, H, W, C] (channels_last) or [B, C, H, W].
    row_mask: float32 [h'] mask of the kept rows (`k.kept_rows` order).
    col_mask: float32 [c] mask of rFFT columns 0..c-1.
    k: `crop_constants(...)` of this crop.
    channels_first: layout of x and of the result.
    custom_gradient: hand-written gradient (default `CUSTOM_GRADIENT`).

  Returns:
    float32 [B, h', w', C] or [B, C, h', w'].
  """
  if custom_gradient is None:
    custom_gradient = _use_custom_gradient()
  layout = _Layout(tuple(x.shape), channels_first, k)
  if not custom_gradient:
    rows, cols = _operators(row_mask, col_mask, k)
    return layout.output(_forward(x, rows, cols, layout)[1])

  c = lambda a: ops.convert_to_tensor(a)

  @ops.custom_gradient
  def crop(x, row_mask, col_mask):
    rows, cols = _operators(row_mask, col_mask, k)
    t, y = _forward(x, rows, cols, layout)

    def grad(*args, upstream=None):
      dy = args[0] if upstream is None else upstream
      # dt = rows^T dy, dx = dt cols (the adjoint operator).
      if channels_first:
        dy_v = ops.reshape(dy, (-1, k.out_height, k.out_width))
        t_v = ops.reshape(t, (-1, 2 * k.height, k.out_width))
      else:
        dy_v = ops.reshape(dy, (layout._batch(), k.out_height,  # pylint: disable=protected-access
                                k.out_width * layout.chans))
        t_v = ops.reshape(t, (layout._batch(), 2 * k.height,  # pylint: disable=protected-access
                              k.out_width * layout.chans))
      dt = ops.matmul(ops.transpose(rows), dy_v)  # [.., 2H, w'(C)]
      dx = layout.input_like(layout.along_width(dt, cols, adjoint=True))
      # Row mask: g = sum over maps of dy t^T, then the small bases.
      g = ops.sum(ops.matmul(dy_v, ops.transpose(t_v, (0, 2, 1))), axis=0)
      d_rows = (ops.sum(ops.matmul(ops.transpose(c(k.p_re)), g) * c(k.q1),
                        axis=1)
                - ops.sum(ops.matmul(ops.transpose(c(k.p_im)), g) * c(k.q2),
                          axis=1))
      # Column mask, on the ramp columns only: d gain_l = sum over maps and
      # rows of (dt . G[:, l]) (x . F[l, :]) for both parts.
      if channels_first:
        v = ops.matmul(ops.reshape(dt, (-1, 2 * k.out_width)),
                       ops.transpose(c(k.v_cols)))  # [B C H, 2K]
        s = ops.matmul(ops.reshape(x, (-1, k.width)),
                       ops.transpose(c(k.s_cols)))  # [B C H, 2K]
        prod = ops.sum(v * s, axis=0)
      else:
        v = ops.matmul(c(k.v_cols), ops.reshape(
            dt, (-1, 2 * k.out_width, layout.chans)))  # [B H, 2K, C]
        s = ops.matmul(c(k.s_cols), ops.reshape(
            x, (-1, k.width, layout.chans)))  # [B H, 2K, C]
        prod = ops.sum(ops.sum(v * s, axis=2), axis=0)
      num_ramp = len(k.ramp_cols)
      d_gain = prod[:num_ramp] + prod[num_ramp:]
      d_ramp = d_gain * c(k.col_weights[k.ramp_cols])
      first = k.num_cols - num_ramp  # The ramp columns end the kept ones.
      d_cols = (ops.concatenate([ops.zeros((first,), d_ramp.dtype), d_ramp])
                if first else d_ramp)
      return dx, d_rows, d_cols

    return layout.output(y), grad

  return crop(x, row_mask, col_mask)


def column_operator(col_mask, k: CropConstants):
  """The real part of B = rDFT_W[:, :c] diag(mask * w) irDFT_w': [W, w'].

  The 1-D layer applies y = x B_re along its axis (`DiffStride1D`).
  """
  c = lambda a: ops.convert_to_tensor(a)
  gain = col_mask * c(k.col_weights)
  cols = (ops.matmul(c(k.g1) * gain[None, :], c(k.f_re))
          + ops.matmul(c(k.g2) * gain[None, :], c(k.f_im)))  # [2w', W]
  return ops.transpose(cols[:k.out_width])
