"""Layers whose output size depends on a stride's value: where it comes from.

A DiffStride layer's output size is a piecewise-constant function of its
stride: it changes only when the mask's support gains or loses a frequency.
`SizedLayer` is the one place that decides where a layer's sizes, hence the
operands of its crop (`diffstride.dft`), come from:

  * TensorFlow graphs that XLA does not compile (`tf.function`, Keras' `fit`
    on a CPU by default): at run time, from the strides' value, on the host
    (`backend.host_call`); exact with nothing to keep current.
  * Everywhere else (eager code on every backend, XLA, `jax.jit`, PyTorch,
    exports under `static_shapes()`): from the host copy of the strides that
    the layer holds (read at every eager call; kept current in compiled code
    by `diffstride.sizes.track_sizes` / `update_sizes`), so that every shape
    is static. A computation traced from that copy checks at run time that
    its strides still give the same sizes (`backend.stale_guard`).

Either way the sizes are computed by the same host formulas
(`diffstride.masks`) in float32, exactly as the official layer does.
"""

import contextlib
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from keras import ops
import numpy as np

from diffstride import backend
from diffstride import crop
from diffstride import dft
from diffstride import masks

# Global (not thread-local) depths: tf.distribute traces replicas in threads.
_GUARD_DEPTH = 0
_STATIC_DEPTH = 0


@contextlib.contextmanager
def guarded():
  """Inside: a tracked model's compiled function runs (or is traced)."""
  global _GUARD_DEPTH
  _GUARD_DEPTH += 1
  try:
    yield
  finally:
    _GUARD_DEPTH -= 1


def guard_active() -> bool:
  return _GUARD_DEPTH > 0


@contextlib.contextmanager
def static_shapes():
  """Inside: the layers use static output sizes on TensorFlow graphs without
  XLA too (for exports: SavedModels whose spatial dimensions are static). The
  sizes are those of the strides' values when the layer is traced, or those
  last resolved (`update_sizes`)."""
  global _STATIC_DEPTH
  _STATIC_DEPTH += 1
  try:
    yield
  finally:
    _STATIC_DEPTH -= 1


def static_forced() -> bool:
  return _STATIC_DEPTH > 0


def sizes_at_run_time() -> bool:
  """True where the output sizes come from the graph at run time."""
  return backend.tf_graph_without_xla() and not static_forced()


FIX = ('Keep the sizes current: call `diffstride.track_sizes(model)` once '
       'before fit / evaluate / predict (diffstride.resnet.Resnet and '
       'AudioClassifier do it themselves), or in a custom loop call '
       '`sizes = diffstride.update_sizes(model)` before each step and pass '
       '`sizes` to the compiled step as a static argument.')


class _SizeState:
  """A layer's host copy of its strides and the sizes derived from it (kept
  out of Keras' attribute tracking)."""

  def __init__(self):
    self.host_strides: Optional[np.ndarray] = None
    self.dims: List[Tuple[int, ...]] = []  # input sizes seen, in order
    self.cache: Dict[Tuple[int, ...], Any] = {}
    self.manual = False  # update_sizes was called on this layer


class SizedLayer:
  """Mixin of the layers whose output size depends on a stride's value.

  Subclasses have a `strides` weight and define
  `_resolve_sizes(dims, host_strides)` (hashable sizes for input spatial
  sizes `dims`, from float32 strides), `_sizes_summary(sizes)` (the output
  size) and `_constants(dims, sizes)` (the crop's operands: a namedtuple of
  float32 arrays, `dft.CropConstants` unless the class sets `_OPERANDS` and
  `_OPERAND_RANKS`, the namedtuple type and the rank of each field, e.g.
  `dct.DCTConstants` and `dct.RANKS`).
  """

  _OPERANDS = dft.CropConstants
  _OPERAND_RANKS = dft.RANKS

  @property
  def _size_state(self) -> _SizeState:
    state = self.__dict__.get('_diffstride_size_state')
    if state is None:
      state = _SizeState()
      object.__setattr__(self, '_diffstride_size_state', state)
    return state

  def _set_host_strides(self, values):
    values = np.asarray(values, np.float32).reshape(-1).copy()
    state = self._size_state
    if (state.host_strides is not None
        and state.host_strides.tobytes() == values.tobytes()):
      return
    state.host_strides = values
    state.cache = {}

  def _refresh_from_variable(self):
    self._set_host_strides(ops.convert_to_numpy(self.strides))

  def _record_dims(self, dims: Tuple[int, ...]):
    if backend.in_symbolic_scope():  # Shape inference, not a real call.
      return
    if dims not in self._size_state.dims:
      self._size_state.dims.append(dims)

  def _sizes_for(self, dims: Tuple[int, ...]):
    state = self._size_state
    if state.host_strides is None:
      raise ValueError(
          f'{type(self).__name__} {self.name!r} has no known stride value: '
          'build it, call it eagerly once, or call diffstride.update_sizes.')
    sizes = state.cache.get(dims)
    if sizes is None:
      sizes = self._resolve_sizes(dims, state.host_strides)
      state.cache[dims] = sizes
    return sizes

  def size_key(self) -> Tuple:
    """Hashable output sizes for every input size this layer has seen."""
    state = self._size_state
    if state.host_strides is None:
      return ()
    return tuple((dims, self._sizes_summary(self._sizes_for(dims)))
                 for dims in state.dims)

  def output_size(self, dims: Sequence[int]) -> Tuple[int, ...]:
    """The output spatial size for input spatial size `dims`, from the
    strides last resolved (what compiled code uses)."""
    return self._sizes_summary(self._sizes_for(tuple(int(d) for d in dims)))

  def output_sizes(self) -> Dict[Tuple[int, ...], Tuple[int, ...]]:
    """{input spatial size: output spatial size} from the strides last
    resolved (the sizes compiled code uses)."""
    return dict(self.size_key())

  # -- the crop's operands

  def _crop_operands(self, dims: Sequence, strides):
    """The crop's operands for input spatial sizes `dims`, and whether they
    must be checked against the strides at run time.

    Args:
      dims: the input's spatial sizes (ints; scalar tensors where dynamic in a
        TensorFlow graph).
      strides: the float32 strides tensor.

    Returns:
      (the operands as tensors, traced): `traced` is True when the sizes
      come from the host copy but the strides' value is not known now (a
      compiled trace), so the caller adds `_stale_guard`.
    """
    if sizes_at_run_time():
      return self._run_time_operands(dims, strides), False
    if any(not isinstance(d, int) for d in dims):
      raise ValueError(
          f'{type(self).__name__} needs static spatial dimensions under XLA, '
          'JAX and PyTorch (its output size is computed on the host), got '
          f'spatial sizes {tuple(dims)}. Give the model fixed-size inputs, or '
          'use TensorFlow without jit_compile.')
    dims = tuple(dims)
    self._record_dims(dims)
    host = backend.concrete_value(strides)
    if host is not None:
      self._set_host_strides(host)
    sizes = self._sizes_for(dims)
    if host is None:
      self._check_managed(self._sizes_summary(sizes))
    return (crop.operands(self._constants(dims, sizes)),
            host is None and not backend.in_symbolic_scope())

  def _run_time_operands(self, dims, strides):
    """Operands computed on the host when the graph runs."""

    def constants(dims_value, strides_value):
      dims_value = tuple(int(d) for d in dims_value)
      sizes = self._resolve_sizes(dims_value, strides_value)
      return list(self._constants(dims_value, sizes))

    dims = ops.stack([ops.cast(d, 'int32') for d in dims])
    return self._OPERANDS(*backend.host_call(constants, [dims, strides],
                                             self._OPERAND_RANKS))

  def _stale_guard(self, y, axes, out_size):
    """y, failing loudly at run time if the strides now give other sizes.

    Args:
      y: the output computed with the traced sizes.
      axes: per axis, (threshold t tensor, np positions of all frequencies,
        number of kept frequencies traced).
      out_size: the traced output size, for the message.
    """
    stale = None
    for t, positions, count in axes:
      now = ops.sum(ops.cast(ops.greater(
          masks.ramp_values(t, self.smoothness_factor, positions), 0.0),
                             'int32'))
      axis_stale = ops.not_equal(now, count)
      stale = axis_stale if stale is None else ops.logical_or(stale,
                                                              axis_stale)
    message = (f'{type(self).__name__} layer {self.name!r}: its strides now '
               'give another output size than the '
               f'{out_size} this compiled function was traced with. {FIX}')
    return backend.stale_guard(y, stale, message)

  def _check_managed(self, out_size):
    """Called when the layer is traced with static sizes from its host copy.

    Outside a tracked model's compiled function and unless `update_sizes` was
    called on it, nothing keeps those sizes current: XLA (TensorFlow's or
    JAX's) would go on with a stale size after the strides moved, so this
    refuses to trace, before any training step, with the fix. A TensorFlow
    graph forced to static shapes (an export) only warns: it is not trained.
    """
    if guard_active() or self._size_state.manual:
      return
    if backend.in_symbolic_scope():  # Shape inference only.
      return
    what = ('compiled by XLA' if backend.name() == 'tensorflow'
            else 'compiled (jax.jit)')
    if backend.tf_graph_without_xla():
      warnings.warn(
          f'{type(self).__name__} layer {self.name!r} is traced with a static '
          f'output size {out_size} that nothing keeps current: if its strides '
          f'change, this function raises. {FIX}', stacklevel=4)
      return
    raise ValueError(
        f'{type(self).__name__} layer {self.name!r} is being {what} with a '
        f'static output size {out_size} that nothing keeps current (its '
        'strides will move during training and the compiled function would '
        f'then stop). {FIX}')
