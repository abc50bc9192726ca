"""Recomputing BatchNormalization statistics after training ("precise BN").

At inference BatchNormalization normalises with exponential moving averages
(EMAs) of the batch statistics, which lag behind the weights when the
learning rate does not decay. DiffStride's larger maps (about H / S + 2R per
side) make a network sensitive to that lag: in issue 12 the digits test
accuracy with moving statistics jumped between 0.19 and 0.80 from one epoch
to the next, against 0.95 once the statistics were recomputed by
`recalibrate_batch_norm(model, data)` (or, from `fit`, the callback
`BatchNormRecalibration`). Tutorial: `examples/digits.py`.

Definition (what the tests check against NumPy): for every
`keras.layers.BatchNormalization` layer (found recursively, also inside
subclassed layers) and every batch b = 1..N of `data`, mean_b[c] and
var_b[c] are the mean and the biased variance of the layer's input over all
axes but the channel axis, as the layer computes them in training mode
(`keras.ops.moments` on the input cast to at least float32). Then

  moving_mean = (1 / N) sum_b mean_b,  moving_variance = (1 / N) sum_b var_b

(summed in float64): an equal-weight average, not an EMA, of the per-batch
variances, not the variance pooled over all examples, as in precise BN (Wu &
Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's
`update_bn_stats`). One forward pass computes all the layers' statistics:
every BN layer normalises with its batch statistics (as in training) and
every other layer runs with `training=False` (Dropout off, as at inference).
During it each BN layer's `call` is replaced on the instance by a function
that records the moments instead of updating the EMA. Only the moving
statistics are written, once at the end.

Backends: the moments of a batch come from one function, a `tf.function` on
TensorFlow (cached per model: recalibrating every epoch does not retrace),
eager on JAX (DiffStride then reads its strides at every call) and under
`torch.no_grad()` on PyTorch (`_compile`). `diffstride.batches` reads the
data; TensorFlow is used only when already imported. Not thread-safe.
"""

import contextlib
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import keras
import numpy as np

from diffstride import batches as batches_lib
from diffstride import methods

__all__ = ['BatchNormRecalibration', 'RecalibrationResult',
           'recalibrate_batch_norm']


class RecalibrationResult(NamedTuple):
  """What `recalibrate_batch_norm` did.

  Attributes:
    num_batches: batches the statistics were averaged over.
    num_examples: examples in those batches.
    layers: names of the BatchNormalization layers whose moving statistics
      were recomputed (those the forward pass called), in the order of
      `_all_layers`.
  """
  num_batches: int
  num_examples: int
  layers: Tuple[str, ...]


def _all_layers(model) -> List[Any]:
  """`model` itself and every layer inside it, each once."""
  return [model] + methods.all_layers(model)


def _batch_norm_layers(model) -> List[keras.layers.BatchNormalization]:
  if not isinstance(model, keras.layers.Layer):
    raise ValueError(
        f'`model` must be a Keras model or layer, got {type(model).__name__}.')
  layers = [l for l in _all_layers(model)
            if isinstance(l, keras.layers.BatchNormalization)]
  if not layers:
    raise ValueError(
        f'Model {model.name!r} has no BatchNormalization layer: there are no '
        'statistics to recalibrate.')
  for layer in layers:
    if getattr(layer, 'moving_mean', None) is None:
      raise ValueError(
          f'BatchNormalization layer {layer.name!r} is not built: build or '
          'call the model once before recalibrating it.')
    if getattr(layer, 'renorm', False):
      raise ValueError(
          f'BatchNormalization layer {layer.name!r} uses batch '
          'renormalization (renorm=True), which recalibrate_batch_norm does '
          'not support.')
  return layers


def _batch_statistics_call(layer, index: int, records: list):
  """A replacement for `layer.call`: training-mode BN without the EMA update.

  Computes what `BatchNormalization.call(training=True)` computes (Keras
  3.15, renorm=False) on inputs [B, ..., C, ...] (C on `layer.axis`), with
  moments mean, variance [C] of the input cast to at least float32, and
  appends (index, mean, variance) to `records` instead of updating the
  moving statistics. `trainable=False` layers too use the batch statistics.
  """

  def call(inputs, training=None, mask=None):
    del training  # Batch statistics whatever the mode.
    if mask is not None:
      raise ValueError(
          f'BatchNormalization layer {layer.name!r} received a mask: '
          'recalibrate_batch_norm does not support masked inputs.')
    compute_dtype = keras.backend.result_type(inputs.dtype, 'float32')
    x = keras.ops.cast(inputs, compute_dtype)
    rank = len(x.shape)
    axis = layer.axis % rank
    reduction_axes = [i for i in range(rank) if i != axis]
    mean, variance = keras.ops.moments(x, axes=reduction_axes)
    records.append((index, mean, variance))
    gamma = keras.ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = keras.ops.cast(layer.beta, x.dtype) if layer.center else None
    outputs = keras.ops.batch_normalization(
        x=x, mean=mean, variance=variance, axis=layer.axis, offset=beta,
        scale=gamma, epsilon=layer.epsilon)
    return keras.ops.cast(outputs, layer.compute_dtype)

  return call


_MISSING = object()


@contextlib.contextmanager
def _hooks(layers, records):
  """Installs `_batch_statistics_call` on every BN layer of `layers`.

  Sets the instance attribute `call`, which `Layer.__call__` finds before the
  class's method (plain attribute lookup, no private API), and restores each
  instance exactly as it was on exit, also when the forward pass raises.
  """
  saved = []
  try:
    for index, layer in enumerate(layers):
      saved.append((layer, vars(layer).get('call', _MISSING)))
      layer.call = _batch_statistics_call(layer, index, records)
    yield
  finally:
    for layer, call in reversed(saved):
      if call is not _MISSING:
        layer.call = call
      elif 'call' in vars(layer):
        delattr(layer, 'call')


def _compile(function):
  """`function` as it runs best on the current backend (the one place where
  the backends differ): a `tf.function` on TensorFlow, under
  `torch.no_grad()` on PyTorch (no autograd graph), as is on JAX."""
  backend = keras.backend.backend()
  if backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.function(function, reduce_retracing=True)
  if backend == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    return torch.no_grad()(function)
  return function


# model -> (signature, forward function, records list). Weak keys, and the
# functions only hold a weak reference to their model, so that a model is not
# kept alive by the cache.
_FORWARD_CACHE = weakref.WeakKeyDictionary()


def _forward_function(model, layers):
  """The function computing the moments of every BN layer on a batch.

  Returns (forward, records): `forward(x)` maps str(index into `layers`) to
  (means [calls, C], variances [calls, C]) float32, `calls` being how many
  times the model calls that layer; `records` is the list the hooks of
  `_hooks` fill while `forward` runs (or is traced). Cached per model so that
  repeated recalibrations (e.g. every epoch) do not retrace; a change of the
  BN layers' configuration makes a new one.
  """
  # What a traced function bakes in about the BN layers.
  signature = tuple((id(l), l.axis, l.epsilon, l.center, l.scale,
                     l.compute_dtype) for l in layers)
  try:
    cached = _FORWARD_CACHE.get(model)
  except TypeError:  # Unhashable or not weak-referenceable: no cache.
    cached = None
  if cached is not None and cached[0] == signature:
    return cached[1], cached[2]
  records: list = []
  model_ref = weakref.ref(model)

  def moments(x):
    del records[:]  # Collects this call's (or trace's) moments.
    model_ref()(x, training=False)
    per_layer: Dict[int, Tuple[list, list]] = {}
    for index, mean, variance in records:
      means, variances = per_layer.setdefault(index, ([], []))
      means.append(keras.ops.cast(mean, 'float32'))
      variances.append(keras.ops.cast(variance, 'float32'))
    return {str(i): (keras.ops.stack(m), keras.ops.stack(v))
            for i, (m, v) in per_layer.items()}

  forward = _compile(moments)
  try:
    _FORWARD_CACHE[model] = (signature, forward, records)
  except TypeError:
    pass
  return forward, records


def _prepare_state(model):
  """Syncs JAX's training state into the variables, checks tf.distribute.

  On JAX, `fit` and `evaluate` keep the state outside the variables between
  syncs; `model.jax_state_sync()` also makes their next step read the
  variables again, so the recalibrated statistics are used. The
  `tf.distribute` check (cross-replica context) runs only if TensorFlow is
  imported.
  """
  sync = getattr(model, 'jax_state_sync', None)
  if callable(sync):
    sync()
  tf = batches_lib.imported('tensorflow')
  if (tf is not None and tf.distribute.has_strategy() and
      not tf.distribute.in_cross_replica_context()):
    raise ValueError(
        'recalibrate_batch_norm must be called in cross-replica context (not '
        'inside strategy.run): it runs whole batches itself.')


def recalibrate_batch_norm(model: keras.layers.Layer,
                           data,
                           *,
                           batch_size: int = 64,
                           num_batches: Optional[int] = None
                           ) -> RecalibrationResult:
  """Recomputes the moving statistics of every BatchNormalization layer.

  Sets each BN layer's `moving_mean` and `moving_variance` [C] to the
  average over the batches of `data` of its batch mean and biased batch
  variance, from one pass with every BN layer in training mode and every
  other layer in inference mode (see the module docstring). Nothing else
  changes (weights, optimizer state, strides, gamma, beta, `trainable`,
  `momentum`). A few batches can be enough (issue 12: 64 digits images gave
  0.941 test accuracy, all 1,400 0.950). Any Keras backend; under
  `tf.distribute`, call it outside `strategy.run` (whole batches on one
  device; every replica's copy is assigned). Under mixed precision the
  moments are float32, as the moving statistics.

  Args:
    model: a built Keras model (or layer) with at least one
      BatchNormalization layer, at any depth.
    data: the examples, read by `diffstride.batches` (see there): arrays
      `x`, `(x, y)` or `(x, y, sample_weight)`, x [num_examples, ...] or a
      dict / tuple of such arrays, cut in order into batches of `batch_size`
      (an incomplete last batch dropped unless it is the only one); a
      batched `tf.data.Dataset`; or an iterable of batches (generator, list,
      `keras.utils.PyDataset`). Labels and sample weights are ignored.
    batch_size: batch size for array data (the statistics depend on it: use
      the training batch size). Ignored for batched data, but validated.
    num_batches: use at most this many batches (None: all of `data`; needed
      for an infinite dataset).

  Returns:
    A `RecalibrationResult(num_batches, num_examples, layers)`. BN layers that
    the forward pass did not call (an unused branch) keep their statistics
    and are not listed.

  Raises:
    ValueError: `model` has no BatchNormalization layer, is not built, or
      has a renorm BN; `batch_size` or `num_batches` is not a positive
      integer; `data` is empty, of an unknown kind, looks unbatched, or is an
      infinite dataset without `num_batches`; a BN input carries a mask;
      called in the replica context of a tf.distribute strategy.

  Example:

    model.fit(x_train, y_train, batch_size=64, epochs=12)
    # x_train: [1400, 32, 32, 1] float32 -> 21 batches of [64, 32, 32, 1].
    result = diffstride.recalibrate_batch_norm(model, x_train, batch_size=64)
    print(result.num_batches, result.num_examples)  # 21 1344
  """
  batches_lib.check_arguments(batch_size, num_batches)
  layers = _batch_norm_layers(model)
  _prepare_state(model)
  forward, records = _forward_function(model, layers)

  # index into `layers` -> (sums [2, C] of the means and variances, count).
  totals: Dict[int, Tuple[np.ndarray, int]] = {}
  used_batches = used_examples = 0
  with _hooks(layers, records):
    for x in batches_lib.batches(data, batch_size, num_batches):
      x = batches_lib.to_tensors(x)
      size = batches_lib.num_examples(x)
      if size == 0:
        raise ValueError(f'Batch {used_batches} of `data` is empty.')
      if used_batches == 0:
        batches_lib.check_batched(model, x)
      for key, moments in forward(x).items():  # 2 x [calls, C]
        stacked = np.stack([keras.ops.convert_to_numpy(m) for m in moments])
        total, count = totals.get(int(key), (0.0, 0))
        totals[int(key)] = (total + stacked.astype(np.float64).sum(axis=1),
                            count + stacked.shape[1])
      used_batches += 1
      used_examples += size
  if used_batches == 0:
    raise ValueError('`data` is empty: it yielded no batch.')
  if not totals:
    raise ValueError('The forward pass called no BatchNormalization layer.')

  saved = [(l.moving_mean.numpy(), l.moving_variance.numpy()) for l in layers]
  try:
    for index, (total, count) in sorted(totals.items()):
      layer = layers[index]
      for variable, value in zip((layer.moving_mean, layer.moving_variance),
                                 total / count):
        variable.assign(np.asarray(value, variable.dtype))
  except BaseException:
    for layer, (mean, variance) in zip(layers, saved):
      layer.moving_mean.assign(mean)
      layer.moving_variance.assign(variance)
    raise
  return RecalibrationResult(
      num_batches=used_batches, num_examples=used_examples,
      layers=tuple(layers[i].name for i in sorted(totals)))


class BatchNormRecalibration(keras.callbacks.Callback):
  """Recalibrates the BatchNormalization statistics from within `fit`.

  Always at the end of `fit` (`on_train_end`), so that the model `fit` leaves
  (to evaluate, predict or save) has recalibrated statistics; with
  `before_validation=True` also before every validation of `fit`, so that
  `history.history['val_...']` are the recalibrated model's metrics. Any
  backend: on JAX the training state is first synced into the variables, and
  the next step reads them back.

  Hook point: Keras 3's `fit` validates after the epoch's last step and
  before `on_epoch_end`, with `evaluate(callbacks=<fit's callbacks>)`, which
  calls `on_test_begin` first: the callback recalibrates there when it comes
  during a `fit` (a standalone `model.evaluate(callbacks=[...])` is left
  alone).

  Args:
    data: the examples, as for `recalibrate_batch_norm` (typically the
      training images), read at every recalibration: arrays, a
      `tf.data.Dataset`, a list, a `keras.utils.PyDataset`, or a
      zero-argument callable returning fresh data (e.g. a generator
      function); a one-shot iterator is rejected.
    batch_size: batch size for array data (use the training batch size).
    num_batches: at most this many batches per recalibration (None: all).
    before_validation: also recalibrate before each validation of `fit`.
    verbose: 1 prints a line per recalibration.

  Attributes:
    results: list of (when, RecalibrationResult), `when` being
      'validation, epoch <e>' (0-based) or 'train_end'.

  Example:

    # x_train: [1400, 32, 32, 1], y_train: [1400].
    model.fit(x_train, y_train, batch_size=64, epochs=12,
              validation_data=(x_test, y_test),
              callbacks=[BatchNormRecalibration(x_train, batch_size=64,
                                                before_validation=True)])
  """

  def __init__(self,
               data,
               batch_size: int = 64,
               num_batches: Optional[int] = None,
               before_validation: bool = False,
               verbose: int = 0):
    super().__init__()
    batches_lib.check_arguments(batch_size, num_batches)
    is_factory = batches_lib.check_rereadable(data)
    self.data = data
    self._is_factory = is_factory
    self.batch_size = batch_size
    self.num_batches = num_batches
    self.before_validation = bool(before_validation)
    self.verbose = verbose
    self.results: List[Tuple[str, RecalibrationResult]] = []
    self._in_fit = False
    self._epoch = None

  def _recalibrate(self, when: str):
    data = self.data() if self._is_factory else self.data
    result = recalibrate_batch_norm(self.model, data,
                                    batch_size=self.batch_size,
                                    num_batches=self.num_batches)
    self.results.append((when, result))
    if self.verbose:
      print(f'BatchNormRecalibration ({when}): {len(result.layers)} layers '
            f'from {result.num_examples} examples in {result.num_batches} '
            'batches.')

  def on_train_begin(self, logs=None):
    self._in_fit = True
    self._epoch = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_test_begin(self, logs=None):
    if self._in_fit and self.before_validation:
      self._recalibrate(f'validation, epoch {self._epoch}')

  def on_train_end(self, logs=None):
    self._in_fit = False
    self._recalibrate('train_end')
