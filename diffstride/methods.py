"""The registry of downsampling methods, and what a model's layers say of them.

A downsampling method is how a network reduces resolution: strided
convolutions, fixed spectral pooling, DiffStride, DCT-DiffStride, average
pooling, BlurPool, adaptive polyphase sampling (APS) or learnable
polyphase sampling (LPS). Each is registered once here, and everything that needs to know the methods reads
this registry: `resnet` resolves a `pooling_cls` name with it, the training
logs and `metrics.json` name a run's method with it, the report orders and
labels its tables with it, the complexity penalty and the export find the
downsampling layers with it, and the gin files `gin/base/<key>.gin` are named
after its keys.

    from diffstride import methods
    methods.get('diffstride').layer_cls          # diffstride.DiffStride
    methods.for_layer_name('FixedSpectralPooling').key  # 'spectral_pooling'
    methods.diffstride_layers(model)              # [DiffStride, ...]

Adding a method: write its layer (a Keras layer taking `strides=` and
`data_format=`, registered with `keras.saving.register_keras_serializable`),
call `register(DownsamplingMethod(...))`, and add `gin/base/<key>.gin`.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

import keras

from diffstride import layers
from diffstride import strides as strides_lib
from diffstride.model_layers import all_layers


PLACEMENTS = ('after_conv', 'after_activation')


@dataclasses.dataclass(frozen=True)
class DownsamplingMethod:
  """One way of downsampling.

  Attributes:
    key: short name, used in `metrics.json`, the report and the gin file
      `gin/base/<key>.gin` (e.g. 'diffstride').
    label: name for tables and figures (e.g. 'DiffStride').
    layer_cls: the downsampling layer class, or None when the convolutions
      themselves are strided.
    layer_names: the names a config or gin file may give `layer_cls`; the
      first is the one written to configs. Default: the class name.
    learns_strides: whether the layer's strides are weights learned by
      gradient descent.
    placement: where a network puts the layer when it replaces a strided
      convolution: 'after_conv' (convolution at stride 1, the layer, then
      BatchNorm and ReLU: DiffStride's paper) or 'after_activation'
      (convolution at stride 1, BatchNorm, ReLU, then the layer: BlurPool's
      and APS's papers, and LPS; a max pool becomes a max pool at stride 1 then the
      layer, and a stride of 1 adds no layer). See `diffstride.resnet`.
  """
  key: str
  label: str
  layer_cls: Optional[type] = None
  layer_names: Tuple[str, ...] = ()
  learns_strides: bool = False
  placement: str = 'after_conv'

  def __post_init__(self):
    if self.placement not in PLACEMENTS:
      raise ValueError(f'`placement` must be one of {PLACEMENTS}, got '
                       f'{self.placement!r}.')
    if not self.layer_names and self.layer_cls is not None:
      object.__setattr__(self, 'layer_names', (self.layer_cls.__name__,))

  @property
  def layer_name(self) -> Optional[str]:
    """The name stored in configs for `layer_cls` (None: strided conv.)."""
    return self.layer_names[0] if self.layer_names else None


_REGISTRY: Dict[str, DownsamplingMethod] = {}


def register(method: DownsamplingMethod) -> DownsamplingMethod:
  """Adds `method` to the registry (after those already there).

  Raises:
    ValueError: if its key, layer class or one of its layer names is taken.
  """
  if method.key in _REGISTRY:
    raise ValueError(f'A downsampling method {method.key!r} is already '
                     'registered.')
  for other in _REGISTRY.values():
    if method.layer_cls is not None and method.layer_cls is other.layer_cls:
      raise ValueError(f'{method.layer_cls.__name__} is already the layer of '
                       f'method {other.key!r}.')
    taken = set(method.layer_names) & set(other.layer_names)
    if taken:
      raise ValueError(f'Layer name(s) {sorted(taken)} already belong to '
                       f'method {other.key!r}.')
  _REGISTRY[method.key] = method
  return method


def unregister(key: str):
  """Removes a method (for tests that register a toy one)."""
  _REGISTRY.pop(key, None)


def all_methods() -> List[DownsamplingMethod]:
  """Every registered method, in registration order (the report's order)."""
  return list(_REGISTRY.values())


def keys() -> List[str]:
  return list(_REGISTRY)


def get(key: str) -> DownsamplingMethod:
  """The method registered under `key`.

  Raises:
    ValueError: naming the registered keys.
  """
  if key not in _REGISTRY:
    raise ValueError(f'Unknown downsampling method {key!r}: use one of '
                     f'{keys()}.')
  return _REGISTRY[key]


def for_layer_cls(layer_cls) -> Optional[DownsamplingMethod]:
  """The method whose layer is `layer_cls` (None -> strided convolutions), or
  None if no method has it. A same-named subclass (gin's wrapper of a
  registered class) counts as its base."""
  if layer_cls is None:
    return _strided_conv()
  for cls in getattr(layer_cls, '__mro__', (layer_cls,)):
    if cls is not layer_cls and cls.__name__ != layer_cls.__name__:
      continue
    for method in _REGISTRY.values():
      if method.layer_cls is cls:
        return method
  return None


def for_layer_name(name: Optional[str]) -> Optional[DownsamplingMethod]:
  """The method whose layer has config name `name` (None -> strided conv.)."""
  if name is None:
    return _strided_conv()
  for method in _REGISTRY.values():
    if name in method.layer_names:
      return method
  return None


def for_layer(layer) -> Optional[DownsamplingMethod]:
  """The method `layer` is the downsampling layer of, or None: that of its
  most specific registered class (a DCTDiffStride is DCT-DiffStride, not
  DiffStride, though it subclasses it)."""
  for cls in type(layer).__mro__:
    for method in _REGISTRY.values():
      if method.layer_cls is cls:
        return method
  return None


def placement_of(layer_cls) -> str:
  """The placement of `layer_cls`'s method; 'after_conv' for a class that no
  method has (a user's own pooling layer)."""
  method = for_layer_cls(layer_cls) if layer_cls is not None else None
  return method.placement if method is not None else 'after_conv'


def _strided_conv() -> Optional[DownsamplingMethod]:
  for method in _REGISTRY.values():
    if method.layer_cls is None:
      return method
  return None


def downsampling_layers(model: keras.layers.Layer) -> List[keras.layers.Layer]:
  """The layers of `model` that belong to a registered method."""
  return [layer for layer in all_layers(model) if for_layer(layer) is not None]


def diffstride_layers(model: keras.layers.Layer) -> List[layers.DiffStride]:
  """Every `DiffStride` layer of `model` (DCTDiffStride included), in
  creation order."""
  return [layer for layer in all_layers(model)
          if isinstance(layer, layers.DiffStride)]


def learned_strides(model: keras.layers.Layer) -> Dict[str, List[float]]:
  """{layer name: [S_h, S_w]} for every DiffStride layer of `model` (a shared
  stride is given for both axes)."""
  return {layer.name: list(strides_lib.stride_pair(layer.strides))
          for layer in diffstride_layers(model)}


STRIDED_CONV = register(DownsamplingMethod(
    key='strided_conv', label='Strided conv.'))
SPECTRAL_POOLING = register(DownsamplingMethod(
    key='spectral_pooling', label='Spectral pooling',
    layer_cls=layers.FixedSpectralPooling))
DIFFSTRIDE = register(DownsamplingMethod(
    key='diffstride', label='DiffStride', layer_cls=layers.DiffStride,
    layer_names=('DiffStride', 'LearnableSpectralPooling'),
    learns_strides=True))
DCT_DIFFSTRIDE = register(DownsamplingMethod(
    key='dct_diffstride', label='DCT-DiffStride',
    layer_cls=layers.DCTDiffStride, learns_strides=True))
AVG_POOLING = register(DownsamplingMethod(
    key='avg_pooling', label='Average pooling',
    layer_cls=layers.SpatialPooling))
BLURPOOL = register(DownsamplingMethod(
    key='blurpool', label='BlurPool', layer_cls=layers.BlurPool,
    placement='after_activation'))
APS = register(DownsamplingMethod(
    key='aps', label='APS', layer_cls=layers.PolyphasePooling,
    placement='after_activation'))
LPS = register(DownsamplingMethod(
    key='lps', label='LPS', layer_cls=layers.LearnablePolyphasePooling,
    placement='after_activation'))
