"""The user's data as batches of model inputs, on every Keras backend.

`batches(data, batch_size, num_batches)` turns what a user may pass as data
(as `fit` accepts it) into the model inputs of successive batches:

  * arrays: `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, x an array of
    shape [N, ...] (NumPy, or a tensor of any installed framework) or a dict
    / tuple of them (several inputs), cut in order into batches of
    [batch_size, ...]; an incomplete last batch is dropped unless it is the
    only one;
  * a batched `tf.data.Dataset` yielding x, (x, y) or (x, y, w);
  * any other iterable of such batches (a generator, a list, a
    `keras.utils.PyDataset`, a `torch.utils.data.DataLoader`).

Labels and sample weights are dropped. Only Keras and NumPy are imported here:
TensorFlow, JAX and PyTorch objects are recognised only through the modules
the user already imported (`sys.modules`), so on the JAX and PyTorch
backends TensorFlow is never imported unless the user hands in a TensorFlow
object (which means they imported it).
"""

import numbers
import sys
from typing import Any, Iterator, Optional

import keras
import numpy as np


def imported(name: str):
  """The module `name` if the program already imported it, else None (also
  when an import of it failed or was blocked: `sys.modules[name] = None`)."""
  return sys.modules.get(name)


def is_tf_dataset(data) -> bool:
  tf = imported('tensorflow')
  return tf is not None and isinstance(data, tf.data.Dataset)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(batch_size, num_batches):
  """Raises ValueError unless both are positive integers (num_batches may
  be None: all the data)."""
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(
        f'`batch_size` must be a positive integer, got {batch_size!r}.')
  if num_batches is not None and (not _is_int(num_batches) or
                                  num_batches < 1):
    raise ValueError(
        '`num_batches` must be None (all the data) or a positive integer, '
        f'got {num_batches!r}.')


def _tensor_types() -> tuple:
  """Array types: NumPy, Keras variables and the imported frameworks'."""
  types = [np.ndarray, keras.Variable]
  tf, jax, torch = (imported(n) for n in ('tensorflow', 'jax', 'torch'))
  if tf is not None:
    types += [tf.Tensor, tf.Variable]
  if jax is not None:
    types.append(jax.Array)
  if torch is not None:
    types.append(torch.Tensor)
  return tuple(types)


def _is_array(value, types) -> bool:
  return isinstance(value, types) or keras.ops.is_tensor(value)


def _is_array_structure(value) -> bool:
  """An array, or a non-empty tuple / dict of arrays (nested)."""
  types = _tensor_types()
  if _is_array(value, types):
    return True
  if isinstance(value, (tuple, dict)) and value:
    leaves = keras.tree.flatten(value)
    return bool(leaves) and all(_is_array(v, types) for v in leaves)
  return False


def is_array_data(data) -> bool:
  """Arrays to be cut into batches: x, (x,), (x, y) or (x, y, w).

  x is an array or a dict or tuple of arrays (several inputs); y and w, which
  are ignored, may be anything (None, lists). A tuple is never taken for a
  sequence of batches (pass a list for that).
  """
  if isinstance(data, tuple):
    return 1 <= len(data) <= 3 and _is_array_structure(data[0])
  return _is_array_structure(data)


def features(element):
  """The model input of a batch: x of x, (x,), (x, y) or (x, y, w)."""
  if isinstance(element, list):
    element = tuple(element)
  if isinstance(element, tuple):
    if not 1 <= len(element) <= 3:
      raise ValueError(
          'A batch must be x, (x,), (x, y) or (x, y, sample_weight); got a '
          f'tuple of {len(element)} elements. Wrap several model inputs in a '
          'tuple or dict: ((x1, x2), y).')
    return element[0]
  return element


def num_examples(x) -> int:
  """The common leading dimension B of the arrays of x (each [B, ...])."""
  leaves = keras.tree.flatten(x)
  if not leaves:
    raise ValueError('A batch holds no input array.')
  sizes = {int(v.shape[0]) if len(v.shape) else None for v in leaves}
  if None in sizes:
    raise ValueError('Inputs must have a batch (leading) dimension, got a '
                     'scalar.')
  if len(sizes) != 1:
    raise ValueError(
        f'The input arrays of a batch differ in length: {sorted(sizes)}.')
  return sizes.pop()


def to_tensors(x):
  """x with every array as a tensor of the current Keras backend (same
  shapes and dtypes); another framework's tensors go through NumPy."""
  def convert(v):
    if not keras.ops.is_tensor(v) and not isinstance(v, np.ndarray):
      v = np.asarray(v)
    return keras.ops.convert_to_tensor(v)
  return keras.tree.map_structure(convert, x)


def _array_batches(data, batch_size: int) -> Iterator[Any]:
  x = features(data)
  n = num_examples(x)
  if n == 0:
    raise ValueError('`data` is empty (0 examples).')
  # An incomplete last batch would get the same weight as the full ones with
  # noisier statistics: it is dropped unless it is the only batch.
  num_full = n // batch_size
  if num_full == 0:
    yield x
    return
  for i in range(num_full):
    yield keras.tree.map_structure(
        lambda v, i=i: v[i * batch_size:(i + 1) * batch_size], x)


def _dataset_elements(dataset, num_batches: Optional[int]):
  tf = imported('tensorflow')
  if (num_batches is None and
      int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY)):
    raise ValueError(
        '`data` is an infinite tf.data.Dataset (repeat()): pass '
        '`num_batches`.')
  if keras.backend.backend() == 'tensorflow':
    return iter(dataset)
  return dataset.as_numpy_iterator()  # Tensors of another backend next.


def batches(data, batch_size: int,
            num_batches: Optional[int]) -> Iterator[Any]:
  """Yields the model inputs x of the batches of `data` (see the module).

  Args:
    data: arrays, a batched `tf.data.Dataset` or an iterable of batches.
    batch_size: batch size B for array data.
    num_batches: stop after this many batches (None: all of `data`).

  Yields:
    x: an array [B, ...] or a dict / tuple of them, as `data` holds it (not
      converted: see `to_tensors`).

  Raises:
    ValueError: `data` is None, of an unknown kind, an infinite dataset
      without `num_batches`, or arrays with 0 examples.
  """
  if data is None:
    raise ValueError('`data` is None.')
  if is_tf_dataset(data):
    iterator = map(features, _dataset_elements(data, num_batches))
  elif is_array_data(data):
    iterator = _array_batches(data, batch_size)
  elif isinstance(data, tuple):
    raise ValueError(
        'A tuple `data` must be (x,), (x, y) or (x, y, sample_weight) with x '
        f'an array (or a dict / tuple of arrays); got a tuple of {len(data)} '
        'elements. Pass batches as a list, a generator or a tf.data.Dataset.')
  elif isinstance(data, (str, bytes)) or not hasattr(data, '__iter__'):
    raise ValueError(
        '`data` must be arrays (x, (x, y) or a dict), a batched '
        'tf.data.Dataset, or an iterable (generator, list, PyDataset) of '
        f'batches; got {type(data).__name__}.')
  else:
    iterator = map(features, data)
  for i, x in enumerate(iterator):
    if num_batches is not None and i >= num_batches:
      return
    yield x


def check_rereadable(data) -> bool:
  """For data read several times: whether `data` is a zero-argument callable
  returning fresh data (e.g. a generator function).

  Raises:
    ValueError: `data` is None or a one-shot iterator (a generator object).
  """
  if data is None:
    raise ValueError('`data` is None.')
  is_factory = (callable(data) and not is_tf_dataset(data)
                and not is_array_data(data))
  if not is_factory and hasattr(data, '__next__') and iter(data) is data:
    raise ValueError(
        '`data` is read at every recalibration, so it cannot be a one-shot '
        'iterator or generator object: pass arrays, a '
        'tf.data.Dataset, a list, or a function returning a fresh '
        'generator.')
  return is_factory


def check_batched(model, x):
  """Catches an unbatched dataset or generator for a Functional model.

  Only checked where the model declares a single input of known rank.
  """
  try:
    inputs = model.inputs
  except (AttributeError, ValueError):
    return
  leaves = keras.tree.flatten(x)
  if not inputs or len(inputs) != 1 or len(leaves) != 1:
    return
  expected = len(inputs[0].shape)
  got = len(leaves[0].shape)
  if got == expected - 1:
    raise ValueError(
        f'The batches of `data` have rank {got} but the model expects rank '
        f'{expected} inputs (batch first): is the tf.data.Dataset or '
        'generator unbatched? Call .batch(batch_size) on it.')
