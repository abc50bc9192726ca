"""Where the Keras backends differ, in one place.

Everything else in the core is `keras.ops` and NumPy. What a backend decides
here:

  * `concrete_value`: whether a tensor's value is known on the host now (eager
    code) or only later (a `tf.function` graph, a `jax.jit` trace);
  * `tf_graph_without_xla`: TensorFlow graphs that XLA does not compile, the
    one context where DiffStride's output sizes come from the graph at run
    time (`host_call`, see `diffstride.sizes`) rather than from the strides'
    value on the host when the computation is traced;
  * `use_custom_gradient`: whether the spectral crop uses its hand-written
    gradient (`diffstride.crop`) or automatic differentiation;
  * `stale_guard`: how a computation traced with output sizes that its strides
    no longer give reports it (raise, or NaN under XLA, which cannot raise).

TensorFlow is imported only when Keras' backend is TensorFlow.
"""

import functools
from typing import Callable, Optional, Sequence

import keras
from keras import ops
import numpy as np

# Hand-written gradient of the spectral crop: True, False (automatic
# differentiation of the forward matmuls) or None: automatic differentiation
# under XLA (JAX jit, TensorFlow XLA: the plainer program for XLA to fuse),
# the hand-written gradient elsewhere (PyTorch; TensorFlow graphs and
# exports). Measured with benchmarks/backend_benchmark.py (ResNet-18 CIFAR
# training step, 2 shared CPU cores), autodiff / hand-written: JAX jit 0.77x,
# 1.02x and 1.01x, TensorFlow XLA 1.02x, 0.91x and 1.00x in three runs (no
# difference beyond the machine's noise); eager PyTorch 1.6x (the layer alone,
# forward + backward).
CUSTOM_GRADIENT = None


def name() -> str:
  """Keras' backend: 'tensorflow', 'jax' or 'torch'."""
  return keras.backend.backend()


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def tf_in_xla_context() -> bool:
  """True while TensorFlow traces a function that XLA will compile
  (`tf.function(jit_compile=True)`, Keras' `jit_compile=True`).

  Uses TensorFlow's private `control_flow_util` (TF 2.16 - 2.21): the public
  API has no such query. False on other backends.
  """
  if name() != 'tensorflow':
    return False
  tf = _tf()
  if tf.executing_eagerly():
    return False
  from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  return bool(control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph()))


def tf_graph_without_xla() -> bool:
  """True while TensorFlow builds a graph (`tf.function`) that XLA will not
  compile: tensors there can have data-dependent shapes."""
  if name() != 'tensorflow':
    return False
  return not _tf().executing_eagerly() and not tf_in_xla_context()


def concrete_value(value) -> Optional[np.ndarray]:
  """`value` as a NumPy array when it is known on the host now, else None.

  None inside a traced computation: a `tf.function` graph (XLA or not) or a
  `jax.jit` trace (`jax.grad` outside `jit` has concrete values). PyTorch
  tensors are always concrete (under `torch.compile` reading one breaks the
  graph, which keeps the result exact).
  """
  if isinstance(value, keras.Variable):
    value = value.value
  backend = name()
  if backend == 'tensorflow':
    if not _tf().executing_eagerly():
      return None
    return np.asarray(value)
  if backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    if isinstance(value, jax.core.Tracer):
      # Differentiation outside `jit` traces concrete values (JAX >= 0.4.36).
      to_concrete = getattr(value, 'to_concrete_value', None)
      value = to_concrete() if to_concrete is not None else None
      if value is None:
        return None
    return np.asarray(value)
  if backend == 'torch':
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


def host_call(function: Callable[..., Sequence[np.ndarray]], inputs,
              ranks: Sequence[int]):
  """Runs `function` on the host at run time inside a TensorFlow graph.

  Args:
    function: NumPy arrays -> float32 NumPy arrays, one per rank in `ranks`.
    inputs: tensors whose values `function` receives (as NumPy arrays).
    ranks: the rank of each output.

  Returns:
    A list of float32 tensors of the given ranks (unknown sizes), without
    gradient.
  """
  tf = _tf()
  outputs = tf.numpy_function(function, list(inputs),
                              [tf.float32] * len(ranks), stateful=False)
  for output, rank in zip(outputs, ranks):
    output.set_shape([None] * rank)
  return [tf.stop_gradient(o) for o in outputs]


def use_custom_gradient() -> bool:
  """Whether the spectral crop uses its hand-written gradient here."""
  if CUSTOM_GRADIENT is not None:
    return bool(CUSTOM_GRADIENT)
  backend = name()
  if backend == 'jax':
    return False
  if backend == 'tensorflow':
    return not tf_in_xla_context()
  return True


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
  backend = name()
  if backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    jax.lax.cond(stale,
                 lambda: jax.debug.callback(
                     functools.partial(_raise_stale, message=message), stale),
                 lambda: None)
  elif backend == 'tensorflow' and not tf_in_xla_context():
    tf = _tf()
    assertion = tf.debugging.Assert(tf.logical_not(stale), [message])
    with tf.control_dependencies([assertion]):
      y = tf.identity(y)
  elif backend == 'torch' and bool(ops.convert_to_numpy(stale)):
    raise ValueError(message)
  poison = ops.where(stale, float('nan'), 0.0)
  return y + ops.stop_gradient(ops.cast(poison, y.dtype))
