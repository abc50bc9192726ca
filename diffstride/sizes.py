"""DiffStride's output sizes as Python integers, kept current from the strides.

A DiffStride layer's output size is a piecewise-constant function of its
stride: it changes only when the mask's support gains or loses an rFFT bin.
Compiled code with static shapes (XLA, TPU, `jax.jit`, SavedModels) needs that
size as a Python integer, so each layer holds the host copy of its strides it
last saw and derives its sizes from it, in float32 exactly as the layer does
(`diffstride_output_size`). The mask VALUES still come from the stride tensor
in the computation, so the strides' gradients are unchanged.

Who keeps the sizes current, per context:

  * Eager execution (TensorFlow eager, JAX outside `jit`, PyTorch): the layer
    reads its strides' values at every call. Nothing to do.
  * TensorFlow graphs without XLA (`tf.function`, Keras' default on CPU): the
    layer keeps the dynamic-shape implementation (`diffstride.spectral`),
    exact with no host round trip. Nothing to do.
  * `fit` / `evaluate` / `predict` / `*_on_batch` with `jit_compile=True`
    (TensorFlow and JAX; JAX's default): `track_sizes(model)` wraps the model's
    compiled functions so that before every call the sizes are read from the
    strides (on JAX from the state the call receives: no sync) and, when any
    size changed, the function is rebuilt (`make_train_function(force=True)`
    etc., the Keras API for changes during `fit`) or a function compiled
    earlier for the same sizes is reused. `diffstride.resnet.Resnet` and
    `AudioClassifier` do this in their constructor; any other model needs the
    one call. `model.export()` of a tracked model writes static sizes.
  * Custom training loops compiled with static shapes: call
    ``sizes = diffstride.update_sizes(model)`` before each step (in a stateless
    JAX loop ``update_sizes(model, trainable_variables=...)``) and pass `sizes`
    to the compiled step as a static argument (`jax.jit(...,
    static_argnames='sizes')`, or a plain Python argument of a
    `tf.function(jit_compile=True)`), which then retraces exactly when a size
    changes.

A stale size never silently changes the numerics. A layer traced with static
shapes outside these mechanisms refuses to be compiled by TensorFlow's XLA
(which could not report a stale size at run time) and warns once elsewhere;
and every static-shape computation checks that its strides still give the
sizes it was traced with: if not, it raises (JAX; TensorFlow outside XLA) or,
under TensorFlow's XLA, which cannot raise, returns NaN. Each message names
the fix.
"""

import collections
import contextlib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

logger = logging.getLogger('diffstride')

_KINDS = ('train', 'test', 'predict')
# Compiled functions kept per kind, for sizes that come back (strides
# oscillating around a bin edge).
_CACHE_SIZE = 4

# Global (not thread-local) depths: tf.distribute traces replicas in threads.
_GUARD_DEPTH = 0
_STATIC_DEPTH = 0


@contextlib.contextmanager
def _guarded():
  global _GUARD_DEPTH
  _GUARD_DEPTH += 1
  try:
    yield
  finally:
    _GUARD_DEPTH -= 1


def guard_active() -> bool:
  """True while a tracked model's compiled function runs (or is traced)."""
  return _GUARD_DEPTH > 0


@contextlib.contextmanager
def static_shapes():
  """Inside: the layers use static output sizes on TensorFlow outside XLA too
  (for exports: SavedModels whose spatial dimensions are static). The sizes
  are those of the strides' values when the layer is traced, or those last
  resolved (`update_sizes`)."""
  global _STATIC_DEPTH
  _STATIC_DEPTH += 1
  try:
    yield
  finally:
    _STATIC_DEPTH -= 1


def static_forced() -> bool:
  return _STATIC_DEPTH > 0


# ------------------------------------------------------------ host maths


def kept_indices(threshold, smoothness: float,
                 positions: np.ndarray) -> Tuple[int, ...]:
  """Indices of the positions where the float32 mask (R + t - n) / R > 0."""
  r = np.float32(smoothness)
  values = np.float32(1.0 / float(smoothness)) * ((r + threshold) - positions)
  return tuple(int(i) for i in np.nonzero(values > 0)[0])


def kept_count(threshold, smoothness: float, positions: np.ndarray) -> int:
  """Number of positions where the float32 mask (R + t - n) / R is > 0."""
  return len(kept_indices(threshold, smoothness, positions))


def raise_to(value: np.float32, minimum: np.float32) -> np.float32:
  """Straight-through max in float32, as the layers compute it (NaN stays
  NaN, +inf becomes NaN as in TensorFlow)."""
  with np.errstate(invalid='ignore'):
    return np.float32(value + (np.maximum(value, minimum) - value))


def constrain(value: np.float32, lower: float, upper: float) -> np.float32:
  """`StrideConstraint` on one float32 value."""
  if np.isnan(value):
    value = np.float32(lower)
  return np.float32(np.clip(value, np.float32(lower), np.float32(upper)))


class _SizeState:
  """A layer's host copy of its strides and the sizes derived from it (kept
  out of Keras' attribute tracking)."""

  def __init__(self):
    self.host_strides: Optional[np.ndarray] = None
    self.dims: List[Tuple[int, ...]] = []  # input sizes seen, in order
    self.cache: Dict[Tuple[int, ...], Any] = {}
    self.warned = False
    self.manual = False  # update_sizes was called on this layer


class SizedLayer:
  """Mixin of the layers whose output size depends on a stride's value.

  Subclasses define `_resolve_sizes(dims, host_strides)` (hashable sizes for
  input spatial sizes `dims`) and `_sizes_summary(sizes)` (output size).
  """

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

  def _record_dims(self, dims: Tuple[int, ...]):
    state = self._size_state
    from diffstride import backend_ops  # pylint: disable=g-import-not-at-top
    if backend_ops.in_symbolic_scope():  # Shape inference, not a real call.
      return
    if dims not in state.dims:
      state.dims.append(dims)

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

  def output_size(self, dims: Tuple[int, ...]) -> Tuple[int, ...]:
    """The output spatial size for input spatial size `dims`, from the
    strides last resolved (what compiled code uses)."""
    return self._sizes_summary(self._sizes_for(tuple(int(d) for d in dims)))

  def output_sizes(self) -> Dict[Tuple[int, ...], Tuple[int, ...]]:
    """{input spatial size: output spatial size} from the strides last
    resolved (the sizes compiled code uses)."""
    return dict(self.size_key())

  def _refresh_from_variable(self):
    self._set_host_strides(keras.ops.convert_to_numpy(self.strides))

  def _warn_if_unmanaged(self, out_size):
    """Called when the layer is traced with static sizes from its host copy.

    Outside a tracked model's compiled function and unless `update_sizes` was
    called on it, nothing keeps those sizes current. TensorFlow's XLA cannot
    raise at run time (a stale size would only show as NaN, maybe hours
    later), so there this refuses to trace; elsewhere (JAX, which raises at
    run time when a size is stale) it warns once.
    """
    state = self._size_state
    if guard_active() or state.manual:
      return
    from diffstride import backend_ops  # pylint: disable=g-import-not-at-top
    if backend_ops.in_symbolic_scope():  # Shape inference only.
      return
    if (keras.backend.backend() == 'tensorflow'
        and backend_ops.tf_in_xla_context()):
      raise ValueError(_unmanaged_message(self, out_size, xla=True))
    if state.warned:
      return
    state.warned = True
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn(_unmanaged_message(self, out_size), stacklevel=3)

  def _stale_message(self, out_size) -> str:
    return (f'{type(self).__name__} layer {self.name!r}: its strides now give '
            f'another output size than the {out_size} this compiled function '
            f'was traced with. {FIX}')


FIX = ('Keep the sizes current: call `diffstride.track_sizes(model)` once '
       'before fit / evaluate / predict (diffstride.resnet.Resnet and '
       'AudioClassifier do it themselves), or in a custom loop call '
       '`sizes = diffstride.update_sizes(model)` before each step and pass '
       '`sizes` to the compiled step as a static argument.')


def _unmanaged_message(layer, out_size, xla: bool = False) -> str:
  if xla:
    return (f'{type(layer).__name__} layer {layer.name!r} is being compiled '
            f'by XLA with a static output size {out_size} that nothing keeps '
            'current (XLA cannot check it at run time: a stale size would '
            f'make the outputs NaN). {FIX} Or compile without XLA '
            '(jit_compile=False): TensorFlow graphs find the size themselves.')
  return (f'{type(layer).__name__} layer {layer.name!r} is compiled with a '
          f'static output size {out_size} (jax.jit or an export) that '
          'nothing keeps current: if its strides change, that compiled '
          f'function raises. {FIX}')


# ------------------------------------------------------------ model level


def _all_layers(model) -> list:
  if not isinstance(model, keras.layers.Layer):
    raise ValueError(f'Expected a Keras layer or model, got {model!r}.')
  from diffstride import methods  # pylint: disable=g-import-not-at-top
  return [model] + methods.all_layers(model)


def sized_layers(model) -> List[SizedLayer]:
  """The layers of `model` (itself included) whose sizes depend on strides."""
  return [layer for layer in _all_layers(model)
          if isinstance(layer, SizedLayer) and layer.built]


def _values_by_variable(model, trainable_variables, non_trainable_variables):
  values = {}
  for variables, given in ((model.trainable_variables, trainable_variables),
                           (model.non_trainable_variables,
                            non_trainable_variables)):
    if given is None:
      continue
    given = list(given)
    if len(given) != len(variables):
      raise ValueError(
          f'Got {len(given)} variable values for the {len(variables)} '
          'variables of the model (pass lists in the order of '
          '`model.trainable_variables` / `model.non_trainable_variables`).')
    for variable, value in zip(variables, given):
      values[id(variable)] = value
  return values


def update_sizes(model, trainable_variables: Optional[Sequence] = None,
                 non_trainable_variables: Optional[Sequence] = None) -> Tuple:
  """Resolves every DiffStride layer's output sizes from its strides' values.

  Args:
    model: a model or layer containing DiffStride / DiffStride1D layers.
    trainable_variables, non_trainable_variables: optional values of
      `model.trainable_variables` / `model.non_trainable_variables` (in that
      order), for stateless JAX loops whose state is not in the variables;
      by default the variables are read.

  Returns:
    A hashable key of all the layers' output sizes: pass it to a compiled
    step as a static argument so that it is retraced when a size changes.
  """
  layers = sized_layers(model)
  values = _values_by_variable(model, trainable_variables,
                               non_trainable_variables)
  for layer in layers:
    value = values.get(id(layer.strides))
    if value is None:
      layer._refresh_from_variable()  # pylint: disable=protected-access
    else:
      layer._set_host_strides(keras.ops.convert_to_numpy(value))  # pylint: disable=protected-access
    layer._size_state.manual = True  # pylint: disable=protected-access
  return tuple((layer.name, layer.size_key()) for layer in layers)


def _key_summary(key) -> Dict[str, Any]:
  return {name: [list(out) for _, out in sizes] for name, sizes in key}


class SizeTracker:
  """Keeps a model's compiled functions in step with its DiffStride sizes.

  Attributes:
    size_changes: how many times the sizes differed from those of the
      previous training step.
    recompilations: {'train' | 'test' | 'predict': functions rebuilt because
      of a size change}.
    reuses: {kind: times a function compiled earlier for the same sizes was
      used again instead}.
    events: [(kind, step, sizes)] each size change / rebuild, for logs.
  """

  def __init__(self, model):
    self._model = model
    self.size_changes = 0
    self.recompilations = {kind: 0 for kind in _KINDS}
    self.reuses = {kind: 0 for kind in _KINDS}
    self.events: List[Tuple[str, int, Dict[str, Any]]] = []
    self._train_calls = 0
    self._train_key = None
    self._compiled = {kind: collections.OrderedDict() for kind in _KINDS}
    self._active_key = {kind: None for kind in _KINDS}
    self._original_make = {}
    self._variable_index = None

  @property
  def model(self):
    return self._model

  # -- installation

  def _install(self):
    model = self._model
    for kind in _KINDS:
      name = f'make_{kind}_function'
      original = getattr(model, name)
      self._original_make[kind] = original
      object.__setattr__(model, name, self._make_maker(kind, original))
    original_export = getattr(model, 'export', None)
    if original_export is not None:
      object.__setattr__(model, 'export', self._make_export(original_export))

  def _make_maker(self, kind, original):
    attr = f'{kind}_function'

    def make_function(force=False):
      model = self._model
      if force or getattr(model, attr, None) is None:
        self._compiled[kind].clear()
        self._active_key[kind] = None
        self._variable_index = None  # compile() may reorder the variables.
      result = original(force=force)
      raw = getattr(model, attr, None)
      if raw is None or isinstance(raw, _GuardedFunction):
        return result
      if not self._needs_guard():
        return result
      guarded = _GuardedFunction(self, kind, raw)
      object.__setattr__(model, attr, guarded)
      return guarded

    make_function.__doc__ = original.__doc__
    return make_function

  def _make_export(self, original):

    def export(*args, **kwargs):
      update_sizes(self._model)
      with static_shapes(), _guarded():
        return original(*args, **kwargs)

    export.__doc__ = original.__doc__
    return export

  def _needs_guard(self) -> bool:
    model = self._model
    if keras.backend.backend() not in ('tensorflow', 'jax'):
      return False  # PyTorch reads the strides at every call.
    return bool(not model.run_eagerly and model.jit_compile)

  # -- per call

  def _refresh(self, args) -> Tuple:
    model = self._model
    if keras.backend.backend() == 'jax' and args and isinstance(
        args[0], (tuple, list)) and len(args[0]) >= 2:
      # The state the jitted function receives: (trainable values,
      # non-trainable values, ...); the variables themselves may be purged.
      state = args[0]
      return self._refresh_from_state(state[0], state[1])
    return update_sizes(model)

  def _refresh_from_state(self, trainable, non_trainable):
    model = self._model
    if self._variable_index is None:
      index = {}
      for i, v in enumerate(model.trainable_variables):
        index[id(v)] = (0, i)
      for i, v in enumerate(model.non_trainable_variables):
        index[id(v)] = (1, i)
      self._variable_index = index
    layers = sized_layers(model)
    for layer in layers:
      where = self._variable_index.get(id(layer.strides))
      if where is None:
        layer._refresh_from_variable()  # pylint: disable=protected-access
        continue
      values = trainable if where[0] == 0 else non_trainable
      layer._set_host_strides(np.asarray(values[where[1]]))  # pylint: disable=protected-access
    return tuple((layer.name, layer.size_key()) for layer in layers)

  def _call(self, kind, guarded, args, kwargs):
    model = self._model
    if model.steps_per_execution > 1:
      raise ValueError(
          'A model with DiffStride layers and jit_compile=True needs '
          f'steps_per_execution=1 (got {model.steps_per_execution}): the '
          'output sizes are brought up to date between compiled steps. Use '
          'steps_per_execution=1, or jit_compile=False.')
    key = self._refresh(args)
    if kind == 'train':
      self._train_calls += 1
      if self._train_key is not None and key != self._train_key:
        self.size_changes += 1
        self.events.append(('size_change', self._train_calls,
                            _key_summary(key)))
        logger.info('DiffStride output sizes changed before training step '
                    '%d: %s', self._train_calls, _key_summary(key))
      self._train_key = key
    cache = self._compiled[kind]
    function = cache.get(key)
    traces = function is None
    if traces:
      if cache:
        _fresh_step_for_jax(model, kind)
        self._original_make[kind](force=True)
        function = getattr(model, f'{kind}_function')
        self.recompilations[kind] += 1
        self.events.append((f'recompile_{kind}', self._train_calls,
                            _key_summary(key)))
        logger.info('DiffStride: rebuilding the %s function for the new '
                    'output sizes (%s recompilation #%d).', kind, kind,
                    self.recompilations[kind])
      else:
        function = guarded.raw
      # The trace records the input sizes each layer really sees now (an
      # upstream size change changes them): forget the old ones.
      for layer in sized_layers(model):
        layer._size_state.dims = []  # pylint: disable=protected-access
    else:
      cache.move_to_end(key)
      if self._active_key[kind] is not None and self._active_key[kind] != key:
        self.reuses[kind] += 1
        logger.info('DiffStride: reusing the %s function compiled earlier '
                    'for these output sizes.', kind)
    object.__setattr__(model, f'{kind}_function', guarded)
    try:
      with _guarded():
        return function(*args, **kwargs)
    finally:
      if traces:
        # Keyed by the sizes of the input sizes this trace recorded.
        key = self._current_key()
        cache[key] = function
        while len(cache) > _CACHE_SIZE:
          cache.popitem(last=False)
        if kind == 'train':
          self._train_key = key
      self._active_key[kind] = key

  def _current_key(self) -> Tuple:
    return tuple((layer.name, layer.size_key())
                 for layer in sized_layers(self._model))


def _fresh_step_for_jax(model, kind: str):
  """Makes the next `make_<kind>_function(force=True)` really retrace on JAX.

  Keras 3.15's JAX trainer jits `self.train_step` / `self.test_step`, and
  JAX caches traces by function equality: two bound methods of the same model
  are equal, so a rebuilt function would reuse the jaxpr traced with the old
  sizes. Routing the step through a new function object (on this instance;
  `train_step` is Keras' documented override point, and an override already
  there is kept as the callee) makes the trace a cache miss.
  """
  if keras.backend.backend() != 'jax':
    return
  name = f'{kind}_step'
  current = model.__dict__.get(name)
  base = getattr(current, '_diffstride_base', None)
  if base is None:
    base = current if current is not None else getattr(model, name)

  def step(*args, **kwargs):
    return base(*args, **kwargs)

  step._diffstride_base = base  # pylint: disable=protected-access
  object.__setattr__(model, name, step)


class _GuardedFunction:
  """A model's compiled train / test / predict function, size-checked."""

  def __init__(self, tracker: SizeTracker, kind: str, raw):
    self._tracker = tracker
    self.kind = kind
    self.raw = raw

  def __call__(self, *args, **kwargs):
    return self._tracker._call(self.kind, self, args, kwargs)  # pylint: disable=protected-access


def track_sizes(model) -> SizeTracker:
  """Keeps `model`'s DiffStride output sizes current in fit / evaluate /
  predict / *_on_batch / export, on every backend; returns its tracker.

  Wraps the model's `make_train_function` / `make_test_function` /
  `make_predict_function` (and `export`) on this instance; idempotent. With
  `jit_compile=True` (TensorFlow, JAX) each compiled call first reads the
  strides and rebuilds the function when a size changed; otherwise nothing
  is added to the step (the layers are exact by themselves there).
  """
  if not isinstance(model, keras.Model):
    raise ValueError(f'track_sizes takes a keras.Model, got {model!r}.')
  tracker = model.__dict__.get('_diffstride_size_tracker')
  if tracker is None:
    tracker = SizeTracker(model)
    object.__setattr__(model, '_diffstride_size_tracker', tracker)
    tracker._install()  # pylint: disable=protected-access
  return tracker


def size_tracker(model) -> Optional[SizeTracker]:
  """The tracker `track_sizes` installed on `model`, or None."""
  return model.__dict__.get('_diffstride_size_tracker')
