"""Pooling classes in networks: by name, their arguments, where they go.

A network stores its downsampling layer's class by name in its config
(`pooling_cls_name`) and resolves names back through the registry of
downsampling methods or Keras' registered names (`resolve_pooling_cls`);
`pooling_kwargs_of` keeps the arguments bound to a pooling layer (e.g. with
gin) in the config; `uses_pooling_layer` says whether a network adds the
layer at a given stride. `diffstride.resnet` and `diffstride.resnet_blocks`
use them.
"""

import inspect
from typing import Any, Dict, Optional

import keras

from diffstride import methods
from diffstride import strides as strides_lib

_PACKAGE = 'diffstride'


def _known_pooling_names():
  return sorted(name for method in methods.all_methods()
                for name in method.layer_names)


def pooling_cls_name(pooling_cls) -> Optional[str]:
  """The name under which `pooling_cls` is stored in a config.

  Args:
    pooling_cls: None, a name (returned as is), or a pooling layer class.
      A same-named wrapper subclass (what gin passes for `@DiffStride`) is
      stored under the name of the class it wraps.

  Returns:
    None, the short name of one of this package's pooling layers (e.g.
    'DiffStride'), or the Keras registered name ('package>Name') of a class
    registered with `keras.saving.register_keras_serializable`.

  Raises:
    ValueError: if the class is neither a package pooling layer nor registered
      with Keras.
  """
  if pooling_cls is None or isinstance(pooling_cls, str):
    return pooling_cls
  candidates = [pooling_cls]
  if inspect.isclass(pooling_cls):
    candidates += [base for base in inspect.getmro(pooling_cls)[1:]
                   if base.__name__ == pooling_cls.__name__]
  for candidate in candidates:
    method = methods.for_layer_cls(candidate)
    if method is not None and method.layer_cls is candidate:
      return method.layer_name
    registered = keras.saving.get_registered_name(candidate)
    if keras.saving.get_registered_object(registered) is candidate:
      return registered
  raise ValueError(
      f'Cannot store pooling_cls={pooling_cls!r} in a config: register it with '
      '`@keras.saving.register_keras_serializable()` (or use one of '
      f'{_known_pooling_names()}).')


def resolve_pooling_cls(pooling_cls):
  """Returns the pooling class for `pooling_cls` (None, a name or a class).

  Names are the package's pooling layers ('DiffStride',
  'LearnableSpectralPooling', 'FixedSpectralPooling', 'SpatialPooling',
  optionally prefixed by 'diffstride>') or any Keras registered name.

  Raises:
    ValueError: for an unknown name.
  """
  if pooling_cls is None or not isinstance(pooling_cls, str):
    return pooling_cls
  short = pooling_cls[len(_PACKAGE) + 1:] if pooling_cls.startswith(
      _PACKAGE + '>') else pooling_cls
  method = methods.for_layer_name(short)
  if method is not None and method.layer_cls is not None:
    return method.layer_cls
  found = keras.saving.get_registered_object(pooling_cls)
  if found is None:
    raise ValueError(
        f'Unknown pooling_cls {pooling_cls!r}: expected one of '
        f'{_known_pooling_names()} or a name registered with '
        '`keras.saving.register_keras_serializable`.')
  return found


# Config keys of a pooling layer that the network sets itself per instance.
_PER_INSTANCE_KEYS = ('name', 'strides', 'data_format', 'dtype',
                      'stride_constraint')


def pooling_kwargs_of(layer) -> Dict[str, Any]:
  """The constructor arguments of a pooling layer other than those the
  network sets per instance (strides, data_format, name, dtype): e.g. a
  `smoothness_factor` bound with gin. Stored in the networks' configs so a
  saved model is rebuilt with the same pooling layers."""
  if layer is None:
    return {}
  return {k: v for k, v in layer.get_config().items()
          if k not in _PER_INSTANCE_KEYS}


def uses_pooling_layer(pooling_cls, strides) -> bool:
  """Whether a network downsampling by `strides` with `pooling_cls` adds the
  pooling layer: always for the 'after_conv' methods (a learned stride may
  start at 1), only when a stride exceeds 1 for the 'after_activation' ones
  (BlurPool, APS and LPS at stride 1 would only filter)."""
  if pooling_cls is None:
    return False
  if methods.placement_of(pooling_cls) == 'after_conv':
    return True
  return any(s != 1.0 for s in strides_lib.stride_pair(strides))
