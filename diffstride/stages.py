"""A network's resolution stages and what its convolutions cost, on the host.

The complexity penalty (`diffstride.complexity`) weights each downsampling
layer by the convolutions that run at its resolution, and the logs report the
convolutions' multiply-accumulates at the real map sizes. Both come from
walking the network in execution order, here:

  * `network_stages(model)`: the resolution stages, each with the layer that
    opened it and the compute (sum of k_h * k_w * C_in * C_out) and memory
    (sum of C_out) of the convolutions that run at it;
  * `downsampling_sizes(model, (H, W))`: each downsampling layer's input and
    output map size at the current strides;
  * `conv_macs(model, (H, W))`: multiply-accumulates of the convolutions for
    one example at those sizes.

In a pooled `ResidualLayer` the first convolution and the 1 x 1 shortcut run
before the pooling, at the previous resolution; in a strided-convolution
network a strided convolution runs at its output resolution.
`diffstride.resnet` models are walked by their structure; other models
through `model.layers` (Sequential and Functional models list layers in
execution order; the layers of other subclassed models are taken in creation
order, which must then be the order they run in).

Stages are opened by every `DiffStride` (and `DCTDiffStride`), every `FixedSpectralPooling`, a
strided `Conv2D`, and max or average pooling with strides > 1, so
strided-convolution and spectral networks have the same stages.

Everything here is Python numbers read from the layers (kernel shapes,
configs, the strides' current values): no tensor is built, on any backend.
"""

import dataclasses
from typing import Iterator, List, Optional, Tuple

import keras
import numpy as np

from diffstride import methods
from diffstride import pooling
from diffstride import resnet
from diffstride.strides import stride_pair

Size = Tuple[int, int]


@dataclasses.dataclass
class Stage:
  """One resolution of a network: the layer that opened it and its costs.

  Attributes:
    layer: the downsampling layer that produced this resolution (None for the
      input resolution, stage 0).
    compute: sum of k_h * k_w * C_in * C_out over the convolutions that run at
      this resolution (multiply-accumulates per output position).
    memory: sum of C_out over those convolutions (activations per position).
    convs: those convolutions.
  """
  layer: Optional[keras.layers.Layer]
  compute: float = 0.0
  memory: float = 0.0
  convs: list = dataclasses.field(default_factory=list)


def _is_pooling2d(layer) -> bool:
  return isinstance(layer, (keras.layers.MaxPooling2D,
                            keras.layers.AveragePooling2D))


def _is_spectral(layer) -> bool:
  """A registered method's layer that is not a Keras pooling layer (DiffStride,
  FixedSpectralPooling): it opens a stage whatever its stride."""
  return methods.for_layer(layer) is not None and not _is_pooling2d(layer)


def _changes_size(layer) -> bool:
  """True for a Conv2D that does not keep its input size."""
  if stride_pair(layer.strides) != (1.0, 1.0):
    return True
  return layer.padding == 'valid' and tuple(layer.kernel_size) != (1, 1)


def is_downsampling(layer) -> bool:
  """Whether `layer` opens a new resolution stage (see the module docstring)."""
  if _is_spectral(layer):
    return True
  if isinstance(layer, keras.layers.Conv2D) or _is_pooling2d(layer):
    return stride_pair(layer.strides) != (1.0, 1.0)
  return False


def layer_strides(layer) -> Tuple[float, float]:
  """(S_h, S_w) of a downsampling or resizing layer now, rounded to float32.

  A `DiffStride`'s `strides` weight (a shared (1,) stride for both axes), a
  `FixedSpectralPooling`'s configured strides, a convolution's or pooling
  layer's `strides`; (1.0, 1.0) for layers without strides (padding,
  cropping). Python floats: for sizes and logs, not for gradients.
  """
  if isinstance(layer, pooling.FixedSpectralPooling):
    strides = layer.get_config()['strides']
  else:
    strides = getattr(layer, 'strides', 1.0)
  return tuple(float(v) for v in np.float32(stride_pair(strides)))


def _resize_kind(layer) -> str:
  return 'down' if is_downsampling(layer) else 'resize'


def _walk(layer) -> Iterator[Tuple[str, keras.layers.Layer]]:
  """Yields ('conv' | 'resize' | 'down', layer) in execution order.

  'resize' and 'down' events change the map size (padding, pooling,
  strided or 'valid' convolutions, spectral pooling); 'down' ones also open a
  resolution stage. 'conv' events are convolutions costed at the current
  size; a size-changing convolution yields its resize event first.

  In this package's ResNets the stem and every projecting residual layer are
  downsampling positions whatever their stride, so the networks of the three
  methods (strided convolutions, fixed or learned spectral pooling) have the
  same stages and their penalties compare.
  """
  if isinstance(layer, resnet.Resnet):
    for sub in layer.stack:
      if sub is layer.stem_conv and layer.pooling_cls is None:
        yield ('down', sub)
        yield ('conv', sub)
      else:
        yield from _walk(sub)
  elif isinstance(layer, resnet.ResnetBlock):
    for sub in layer.layers:
      yield from _walk(sub)
  elif isinstance(layer, resnet.ResidualLayer):
    if layer.pooling is not None:
      # Both convolutions that read the block input run before the pooling.
      yield ('conv', layer.strided_conv)
      if layer.shortcut_conv is not None:
        yield ('conv', layer.shortcut_conv)
      yield ('down', layer.pooling)
    else:
      if layer.project:
        yield ('down', layer.strided_conv)
      yield ('conv', layer.strided_conv)
      if layer.shortcut_conv is not None:  # Same output size as strided_conv.
        yield ('conv', layer.shortcut_conv)
    yield ('conv', layer.unstrided_conv)
  elif _is_spectral(layer):
    yield ('down', layer)
  elif isinstance(layer, keras.layers.Conv2D):
    if _changes_size(layer):
      yield (_resize_kind(layer), layer)
    yield ('conv', layer)
  elif _is_pooling2d(layer) or isinstance(
      layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)):
    yield (_resize_kind(layer), layer)
  else:
    subs = getattr(layer, 'layers', None)
    if subs is None:
      subs = methods.all_layers(layer, recursive=False)
    for sub in subs:
      yield from _walk(sub)


def _unique_walk(model):
  """`_walk` with each (kind, layer) once: a shared layer runs once here."""
  seen = set()
  for kind, layer in _walk(model):
    if (kind, id(layer)) not in seen:
      seen.add((kind, id(layer)))
      yield kind, layer


def _kernel_macs(conv) -> float:
  """k_h * k_w * C_in * C_out: multiply-accumulates per output position."""
  kernel = conv.kernel.shape
  return float(kernel[0] * kernel[1] * kernel[2] * kernel[3])


def network_stages(model: keras.layers.Layer) -> List[Stage]:
  """The model's resolution stages in execution order (stage 0: the input).

  The model must be built (convolution kernels give C_in).

  Returns:
    [Stage(None, ...), Stage(first downsampling layer, ...), ...]: L + 1
    stages for L downsampling layers.
  """
  stages = [Stage(None)]
  for kind, layer in _unique_walk(model):
    if kind == 'down':
      stages.append(Stage(layer))
    if kind != 'conv':
      continue
    stage = stages[-1]
    stage.compute += _kernel_macs(layer)
    stage.memory += float(layer.kernel.shape[3])
    stage.convs.append(layer)
  return stages


def _output_size(layer, size: Size, strides: Tuple[float, float]) -> Size:
  """Spatial size after a resizing layer, at the given (current) strides."""
  h, w = size
  if isinstance(layer, pooling.DiffStride):  # DCTDiffStride included.
    return layer.output_size_at((h, w), strides)
  channels = 1
  if isinstance(layer, keras.layers.Conv2D):
    channels = int(layer.kernel.shape[2])
  channels_first = getattr(layer, 'data_format', None) == 'channels_first'
  shape = (1, channels, h, w) if channels_first else (1, h, w, channels)
  out = layer.compute_output_shape(shape)
  return (int(out[2]), int(out[3])) if channels_first else (int(out[1]),
                                                            int(out[2]))


def _sized_walk(model, input_size: Size):
  """Yields (kind, layer, size_in, size_out) in execution order, at the
  current strides; shared layers are visited once."""
  size = tuple(int(v) for v in input_size)
  for kind, layer in _unique_walk(model):
    if kind == 'conv':
      yield kind, layer, size, size
      continue
    out = _output_size(layer, size, layer_strides(layer))
    yield kind, layer, size, out
    size = out


def downsampling_sizes(model: keras.layers.Layer, input_size: Size
                       ) -> List[Tuple[keras.layers.Layer, Size, Size]]:
  """[(downsampling layer, (H, W) in, (h', w') out)] in execution order, the
  real map sizes at the current strides for an (H, W) input."""
  return [(layer, size_in, size_out) for kind, layer, size_in, size_out
          in _sized_walk(model, input_size) if kind == 'down']


def conv_macs(model: keras.layers.Layer, input_size: Size) -> float:
  """Multiply-accumulates of the model's convolutions for one example.

  Map sizes are the real ones at the current strides (for DiffStride about
  H / S + 2R, from `diffstride_output_size`), so this is what the network
  costs to run, not the paper's 1 / S idealisation. Dense layers are left out.
  """
  return sum((_kernel_macs(layer) * (size[0] * size[1])
              for kind, layer, _, size in _sized_walk(model, input_size)
              if kind == 'conv'), 0.0)
