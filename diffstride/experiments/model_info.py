"""What a run's logs say about its model: method, stride initialisation.

The downsampling method comes from the registry (`diffstride.methods`), so a
newly registered method is named in `metrics.json` and the report without
further changes.
"""

from typing import Optional, Tuple

import keras

from diffstride import methods
from diffstride import resnet

DEFAULT_STRIDE_AXES = ('height', 'width')


def _resnet_of(model: keras.Model) -> keras.Model:
  """The model itself, or the `resnet.Resnet` backbone of a wrapper (e.g.
  `audio_model.AudioClassifier`)."""
  backbone = getattr(model, 'backbone', None)
  return backbone if isinstance(backbone, resnet.Resnet) else model


def method_key(model: keras.Model) -> str:
  """The registered method's key ('strided_conv', 'diffstride', ...) of a
  `resnet.Resnet` (or a wrapper of one), else the pooling class's registered
  Keras name. Other models: the method of their first downsampling layer
  that learns its strides, else of their first downsampling layer, else
  their class name."""
  model = _resnet_of(model)
  if isinstance(model, resnet.Resnet):
    method = methods.for_layer_cls(model.pooling_cls)
    return method.key if method else resnet.pooling_cls_name(model.pooling_cls)
  found = [methods.for_layer(l) for l in methods.downsampling_layers(model)]
  for method in sorted(found, key=lambda m: not m.learns_strides):
    return method.key
  return type(model).__name__


def stride_init(model: keras.Model) -> Optional[list]:
  """The initial strides of a `resnet.Resnet`'s projecting stages (the ones
  the paper's initialisations set, e.g. [2, 2, 2] for ResNet-18), else None."""
  model = _resnet_of(model)
  if not isinstance(model, resnet.Resnet):
    return None
  stages = [s for i, s in enumerate(model.block_strides[1:])
            if i not in model.id_only]
  return [list(s) if isinstance(s, (list, tuple)) else s for s in stages]


def stride_axes(model: keras.Model) -> Tuple[str, str]:
  """What the two axes of the model's strides mean: ('time', 'frequency')
  for audio models, else ('height', 'width')."""
  return tuple(getattr(model, 'stride_axes', DEFAULT_STRIDE_AXES))
