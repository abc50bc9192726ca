"""The layers inside a model."""

from typing import List

import keras


def all_layers(model: keras.layers.Layer,
               recursive: bool = True) -> List[keras.layers.Layer]:
  """Every layer inside `model` (nested ones too unless `recursive=False`;
  not `model` itself), each once, in the order they were created in.

  Raises:
    ValueError: if `model` is not a Keras layer or model.
  """
  if not isinstance(model, keras.layers.Layer):
    raise ValueError(f'Expected a Keras layer or model, got {model!r}.')
  # The one use of a private Keras method in the core (Keras 3.15): Keras has
  # no public listing of a layer's sub-layers.
  return list(model._flatten_layers(include_self=False, recursive=recursive))  # pylint: disable=protected-access
