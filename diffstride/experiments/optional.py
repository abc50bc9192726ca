"""TensorFlow and TensorFlow Datasets, imported at their first use.

On the TensorFlow backend the harness's pipelines are `tf.data`; on JAX the
data the project makes or reads itself (the built-in image and audio sets,
image folders, WAV folders) reaches `fit` as NumPy batches
(`data/array_batches.py`), and a run on it never imports TensorFlow, so it works where TensorFlow is
not installed (a GPU machine with JAX only). Modules with a TensorFlow path
take `tf` and `tfds` from here: the real module is imported at the first
attribute access (`tf.data`, `tfds.load`), and where it is not installed
that access raises an ImportError saying what needs it and how to get it.

  * `tf`, `tfds`: the lazy modules.
  * `available(name)`: whether a module can be imported, without importing
    it.
  * `require_tensorflow(what)`: a `TensorFlowMissingError` (an
    ImportError) naming `what` unless
    TensorFlow is installed (the harness's start-up check for the sources
    that read through TensorFlow).
"""

import importlib
import importlib.util
import sys
from typing import Any

_INSTALL = ('install it with `pip install "diffstride[experiments]"` (or '
            '`pip install tensorflow tensorflow-datasets`)')


def available(name: str) -> bool:
  """Whether module `name` can be imported (found, and not blocked by
  `sys.modules[name] = None`), without importing it."""
  if name in sys.modules:
    return sys.modules[name] is not None
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


class TensorFlowMissingError(ImportError):
  """A path of the harness needs TensorFlow, which is not installed."""


def require_tensorflow(what: str) -> None:
  """Raises TensorFlowMissingError unless TensorFlow is installed.

  Args:
    what: what needs it, e.g. "The dataset 'cifar10' (TensorFlow Datasets)".
  """
  if not available('tensorflow'):
    raise TensorFlowMissingError(
        f'{what} needs TensorFlow, which is not installed: {_INSTALL}.')


class _LazyModule:
  """A module imported at the first attribute access."""

  def __init__(self, name: str):
    self._name = name

  def _module(self) -> Any:
    try:
      return importlib.import_module(self._name)
    except ImportError as error:
      raise ImportError(f'This path of the diffstride harness needs '
                        f'{self._name}, which is not installed: {_INSTALL}.'
                        ) from error

  def __getattr__(self, attribute: str) -> Any:
    return getattr(self._module(), attribute)

  def __repr__(self) -> str:
    return f'<lazy module {self._name!r}>'


tf = _LazyModule('tensorflow')
tfds = _LazyModule('tensorflow_datasets')
