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
    sizes are found on the host when the graph runs (`diffstride.sized_layer`),
    exact. Nothing to do.
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
shapes outside these mechanisms refuses to be compiled (TensorFlow's XLA,
`jax.jit`: before any training step, with the fix; a TensorFlow graph forced
to static shapes for an export warns); and every static-shape computation checks that its strides still give the
sizes it was traced with: if not, it raises (JAX; TensorFlow outside XLA) or,
under TensorFlow's XLA, which cannot raise, returns NaN. Each message names
the fix.
"""

import collections
import logging
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from diffstride.model_layers import all_layers
from diffstride.sized_layer import FIX
from diffstride import sized_layer
from diffstride.sized_layer import SizedLayer
from diffstride.sized_layer import static_shapes

logger = logging.getLogger('diffstride')

_KINDS = ('train', 'test', 'predict')
# Compiled functions kept per kind, for sizes that come back (strides
# oscillating around a bin edge).
_CACHE_SIZE = 4

__all__ = ['FIX', 'static_shapes', 'SizedLayer', 'sized_layers',
           'update_sizes', 'SizeTracker', 'track_sizes', 'size_tracker']


# ------------------------------------------------------------ model level


def sized_layers(model) -> List[SizedLayer]:
  """The layers of `model` (itself included) whose sizes depend on strides."""
  return [layer for layer in [model] + all_layers(model)
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
    # Keras compiles (jit_compile='auto' or True) only models whose layers
    # all support it; the layers of a tracked model do.
    for layer in [model] + all_layers(model):
      if isinstance(layer, SizedLayer):
        layer.supports_jit = True
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
      with static_shapes(), sized_layer.guarded():
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
        _attach_jax_state(model, kind, args)
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
      with sized_layer.guarded():
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


def _attach_jax_state(model, kind: str, args):
  """Gives the variables the values of the state a JAX step was called with,
  under a `keras.distribution` (before a rebuild of that step).

  During an epoch, Keras 3.15's JAX `fit` / `evaluate` detach the variables'
  values (they live in the state passed from step to step), and building a
  step under a distribution reads every variable's sharding. The state's
  groups are those of `JAXTrainer.{kind}_step`.
  """
  if (keras.backend.backend() != 'jax' or not args
      or keras.distribution.distribution() is None):
    return
  groups = {'train': (model.trainable_variables,
                      model.non_trainable_variables,
                      model.optimizer.variables if model.optimizer else [],
                      model.metrics_variables),
            'test': (model.trainable_variables, model.non_trainable_variables,
                     model.metrics_variables),
            'predict': (model.trainable_variables,
                        model.non_trainable_variables)}[kind]
  for variables, values in zip(groups, args[0]):
    for variable, value in zip(variables, values):
      variable.assign(value)


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

  Call it before `compile`. Wraps the model's `make_train_function` /
  `make_test_function` / `make_predict_function` (and `export`) on this
  instance; idempotent. With `jit_compile=True` (TensorFlow, JAX) each
  compiled call first reads the strides and rebuilds the function when a size
  changed; otherwise nothing is added to the step (the layers are exact by
  themselves there).

  It also marks the model's DiffStride layers `supports_jit = True`: until
  then they report False, so that Keras never compiles a model whose sizes
  nothing keeps current (on JAX, `fit` of an untracked model runs eagerly:
  exact, but slower).
  """
  if not isinstance(model, keras.Model):
    raise ValueError(f'track_sizes takes a keras.Model, got {model!r}.')
  tracker = model.__dict__.get('_diffstride_size_tracker')
  if tracker is None:
    tracker = SizeTracker(model)
    object.__setattr__(model, '_diffstride_size_tracker', tracker)
    tracker._install()  # pylint: disable=protected-access
    if getattr(model, 'compiled', False):
      warnings.warn('diffstride.track_sizes was called after compile: Keras '
                    'decided then whether to compile the steps (jit_compile).'
                    ' Call compile again to let it compile them.',
                    stacklevel=2)
  return tracker


def size_tracker(model) -> Optional[SizeTracker]:
  """The tracker `track_sizes` installed on `model`, or None."""
  return model.__dict__.get('_diffstride_size_tracker')
