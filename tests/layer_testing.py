"""The standard checks every layer of the package gets, on any backend.

`run_layer_test` is this project's counterpart of keras-hub's
`run_layer_test`: one call runs a layer's standard checks on the Keras
backend of the process (tests/backend_cases.py runs it for every layer, and
tests/backends_test.py runs that file once per backend):

  * build from an input shape; the weights it creates;
  * an eager call: output shape, dtype float32, finite values;
  * a symbolic call inside a Functional model (the static output shape);
  * `get_config` / `from_config` round trip: same config, same outputs with
    the same weights;
  * `.keras` save and load of a model holding the layer: same outputs and
    weights;
  * gradients against central finite differences (float64 loss), for the
    input (a random direction) and for every trainable weight (per element,
    or along random unit directions for weights of more than a few
    elements), with the backend's own differentiation (tf.GradientTape,
    jax.grad, torch autograd);
  * the backend's compiled mode (TensorFlow XLA, jax.jit; PyTorch is eager):
    the same outputs and gradients as eager.

The official fixtures (tests/backend_cases.py `test_matches_official_fixture`)
are checked with the same gradient machinery, `forward_and_grads`.
"""

import os
import tempfile

import keras
from keras import ops
import numpy as np

from diffstride import sizes

BACKEND = keras.backend.backend()


def numpy(x):
  return np.asarray(ops.convert_to_numpy(x))


def compiled_mode() -> str:
  """The backend's compiled mode: 'xla' (TensorFlow), 'jit' (JAX) or
  'eager' (PyTorch, where Keras does not compile by default)."""
  return {'tensorflow': 'xla', 'jax': 'jit'}.get(BACKEND, 'eager')


def forward_and_grads(layer, x, loss_fn, mode='eager'):
  """(y, d loss / dx, [d loss / d w for w in layer.trainable_weights]).

  Args:
    layer: a layer or model (built here by a first call if it is not).
    x: np.ndarray input.
    loss_fn: y tensor -> scalar tensor (keras.ops).
    mode: 'eager', or the backend's compiled mode (`compiled_mode()`): XLA
      on TensorFlow, jax.jit on JAX (with `update_sizes`, as a custom loop).

  Returns:
    NumPy arrays (zeros for a weight the output does not depend on).
  """
  if not layer.built:
    layer(x)
  weights = list(layer.trainable_weights)
  if BACKEND == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def run(x):
      with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        loss = loss_fn(y)
      return y, tape.gradient(loss, x), tape.gradient(loss, weights)

    x = tf.constant(x)
    if mode == 'xla':
      sizes.update_sizes(layer)
      y, dx, dw = tf.function(run, jit_compile=True)(x)
    else:
      y, dx, dw = run(x)
  elif BACKEND == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss_of(trainable, x):
      y, _ = layer.stateless_call(trainable, non_trainable, x)
      return loss_fn(y), y

    grad = jax.grad(loss_of, argnums=(0, 1), has_aux=True)
    if mode == 'jit':
      sizes.update_sizes(layer)
      grad = jax.jit(grad)
    (dw, dx), y = grad(trainable, x)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    for w in weights:  # autograd adds to .grad: start from none.
      w.value.grad = None
    x = torch.tensor(x, requires_grad=True)
    y = layer(x)
    loss_fn(y).backward()
    y, dx = y.detach(), x.grad
    dw = [w.value.grad for w in weights]
  # A weight the output does not depend on (LPS's scorer in inference):
  # TensorFlow and PyTorch give None, JAX zeros.
  return numpy(y), numpy(dx), [
      np.zeros(tuple(w.shape), 'float32') if g is None else numpy(g)
      for w, g in zip(weights, dw)]


# Weights of at most this many elements get a finite difference per element;
# larger ones (LPS's scorer) one along each of `_DIRECTIONS` random unit
# directions.
_MAX_ELEMENTWISE = 4
_DIRECTIONS = 3


def _loss_weights(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype('f4')


def _float64_loss(y, weights):
  return float(np.sum(weights.astype(np.float64) *
                      np.tanh(numpy(y).astype(np.float64))))


def _check_gradients(layer, x, y_shape, seed, fd_eps, fd_atol):
  """Analytic gradients (eager and compiled) vs central differences."""
  weights = _loss_weights(y_shape, seed)
  loss_fn = lambda y: ops.sum(ops.convert_to_tensor(weights) * ops.tanh(y))
  y, dx, dw = forward_and_grads(layer, x, loss_fn)
  mode = compiled_mode()
  if mode != 'eager':
    y_c, dx_c, dw_c = forward_and_grads(layer, x, loss_fn, mode)
    np.testing.assert_allclose(y_c, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx_c, dx, rtol=1e-3,
                               atol=1e-4 * np.max(np.abs(dx)))
    for a, b in zip(dw_c, dw):
      np.testing.assert_allclose(a, b, rtol=1e-3,
                                 atol=1e-4 * np.max(np.abs(b)) + 1e-7)
  rng = np.random.default_rng(seed + 1)
  direction = rng.standard_normal(x.shape).astype(np.float32)
  values = [_float64_loss(layer(x + s * fd_eps * direction), weights)
            for s in (1, -1)]
  numeric = (values[0] - values[1]) / (2 * fd_eps)
  analytic = float(np.sum(dx.astype(np.float64) * direction))
  assert abs(analytic - numeric) <= fd_atol * max(1.0, abs(numeric)), (
      'd loss / dx', analytic, numeric)
  for variable, grad in zip(layer.trainable_weights, dw):
    base = numpy(variable).copy()

    def loss_at(step):
      values = []
      for sign in (1, -1):
        variable.assign(base + sign * step)
        values.append(_float64_loss(layer(x), weights))
      return (values[0] - values[1]) / (2 * fd_eps)

    if base.size <= _MAX_ELEMENTWISE:  # Every element (the strides).
      numeric = np.zeros_like(base, dtype=np.float64)
      for i in np.ndindex(base.shape):
        step = np.zeros_like(base)
        step[i] = fd_eps
        numeric[i] = loss_at(step)
      variable.assign(base)
      np.testing.assert_allclose(
          grad, numeric, rtol=0,
          atol=fd_atol * max(1.0, float(np.max(np.abs(numeric)))),
          err_msg=f'd loss / d {variable.name}')
      continue
    # A larger weight: derivatives along a few random unit directions (a
    # wrong gradient fails along almost every direction), steps no longer
    # than an element's step above.
    for _ in range(_DIRECTIONS):
      direction = rng.standard_normal(base.shape)
      direction = (direction / np.linalg.norm(direction)).astype(np.float32)
      numeric = loss_at(fd_eps * direction)
      analytic = float(np.sum(grad.astype(np.float64) * direction))
      assert abs(analytic - numeric) <= fd_atol * max(1.0, abs(numeric)), (
          f'd loss / d {variable.name} along a direction', analytic, numeric)
    variable.assign(base)


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape,
                   expected_num_trainable_weights=0,
                   expected_num_non_trainable_weights=0, seed=0,
                   fd_eps=5e-3, fd_atol=3e-3, check_gradients=True):
  """Runs the standard checks of `layer_cls(**init_kwargs)`.

  Args:
    layer_cls: the layer class.
    init_kwargs: its constructor arguments.
    input_shape: a full input shape, batch included.
    expected_output_shape: the output shape of an eager call.
    expected_num_trainable_weights, expected_num_non_trainable_weights: what
      `build` creates.
    seed: of the random input and of the layer's initial weights.
    fd_eps: the finite-difference step (strides: stay within one output
      size, see tests/gradient_test.py).
    fd_atol: tolerance of the finite-difference checks, relative to the
      largest numeric gradient (float32 layers, float64 losses).
    check_gradients: False for layers with no gradient to check.
  """
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(input_shape).astype(np.float32)
  # The same initial weights whatever ran before in this process: a layer
  # with a hard choice (LPS in inference) is piecewise constant in some
  # weights, and finite differences are only checked where no step crosses
  # a boundary of its choice.
  keras.utils.set_random_seed(seed)
  layer = layer_cls(**init_kwargs)
  layer.build(input_shape)
  assert len(layer.trainable_weights) == expected_num_trainable_weights
  assert len(layer.non_trainable_weights) == (
      expected_num_non_trainable_weights)

  y = layer(x)
  assert tuple(y.shape) == tuple(expected_output_shape), y.shape
  assert keras.backend.standardize_dtype(y.dtype) == 'float32', y.dtype
  y = numpy(y)
  assert np.all(np.isfinite(y))

  inputs = keras.Input(tuple(input_shape[1:]), batch_size=None)
  symbolic = layer_cls(**init_kwargs)(inputs)
  static = tuple(symbolic.shape[1:])
  assert len(static) == len(expected_output_shape) - 1
  for got, want in zip(static, expected_output_shape[1:]):
    assert got is None or got == want, (static, expected_output_shape)

  clone = layer_cls.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  clone.build(input_shape)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(numpy(clone(x)), y, rtol=1e-6, atol=1e-6)

  model = keras.Sequential([keras.Input(tuple(input_shape[1:])), clone])
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'layer.keras')
    model.save(path)
    loaded = keras.models.load_model(path)
  np.testing.assert_allclose(numpy(loaded(x)), y, rtol=1e-6, atol=1e-6)
  for a, b in zip(loaded.get_weights(), layer.get_weights()):
    np.testing.assert_array_equal(a, b)

  if check_gradients:
    _check_gradients(layer, x, y.shape, seed, fd_eps, fd_atol)
