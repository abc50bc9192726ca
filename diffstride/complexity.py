"""The complexity regulariser: a differentiable cost of the learned strides.

The paper (Riad et al. 2022, Sec. 3.3 and the ImageNet experiments) trades
accuracy for compute by adding to the loss

    lambda * sum_l prod_{j <= l} 1 / (S_h^j * S_w^j)

where l runs over the network's downsampling layers, in order: each term is the
spatial size of the representation after layer l relative to the input. The
gradient of every term in every stride is negative, so gradient descent on the
penalty raises the strides (smaller maps, less compute).

`complexity_penalty(model, form)` computes it:

  * form='paper':   the formula above;
  * form='compute': the terms weighted by the compute of the layers that run at
    that resolution, c_l = sum over convolutions of k_h * k_w * C_in * C_out
    (multiply-accumulates per output position), normalised to mean one over
    the L terms: L * sum_l c_l r_l / sum_l c_l. A network whose stages all
    cost the same gets exactly the paper's value, so lambda means the same
    across models; with channels doubling at every stage (ResNets) the late,
    cheap-per-pixel-but-wide stages count for what they cost;
  * form='memory':  the same with c_l = sum of C_out (activation memory per
    position) of those convolutions.

Which layer runs at which resolution comes from walking the network in
execution order (`network_stages`): in a pooled `ResidualLayer` the first
convolution and the 1 x 1 shortcut run before the pooling, at the previous
resolution; in a strided-convolution network a strided convolution runs at
its output resolution. `diffstride.resnet` models are walked by their
structure; other models through `model.layers` (Sequential and Functional
models list layers in execution order; the layers of other subclassed models
are taken in creation order, which must then be the order they run in).

Stages are opened by every `DiffStride` (learnable: the penalty is
differentiable in its `strides` weight, a shared (1,) stride counting for
both axes) and every fixed downsampling layer (`FixedSpectralPooling`, a
strided `Conv2D`, max or average pooling with strides > 1), so the same
numbers describe strided-convolution networks and place them on the same axis
(`complexity_values`).

In training (`train.complexity_weight = lambda`), `attach_regularizer` puts a
`ComplexityRegularizer` on one stride variable: Keras adds
`weight * penalty` to `model.losses` at every step like any weight
regulariser, inside the replica context under `tf.distribute`, and the
gradient reaches every stride since the penalty reads them all.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from diffstride import methods
from diffstride import pooling
from diffstride import resnet
from diffstride.strides import stride_pair
from diffstride.strides import stride_pair_tensor

FORMS = ('paper', 'compute', 'memory')


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


def _resize_kind(layer) -> str:
  return 'down' if is_downsampling(layer) else 'resize'


def _walk(layer):
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


def network_stages(model: keras.layers.Layer) -> List[Stage]:
  """The model's resolution stages in execution order (stage 0: the input).

  The model must be built (convolution kernels give C_in).

  Returns:
    [Stage(None, ...), Stage(first downsampling layer, ...), ...]: L + 1
    stages for L downsampling layers.
  """
  stages = [Stage(None)]
  seen = set()
  for kind, layer in _walk(model):
    if (kind, id(layer)) in seen:  # A shared layer runs once here.
      continue
    seen.add((kind, id(layer)))
    if kind == 'down':
      stages.append(Stage(layer))
    if kind != 'conv':
      continue
    kernel = layer.kernel.shape
    stage = stages[-1]
    stage.compute += float(kernel[0] * kernel[1] * kernel[2] * kernel[3])
    stage.memory += float(kernel[3])
    stage.convs.append(layer)
  return stages


def stage_strides(layer) -> tf.Tensor:
  """float32[2]: (S_h, S_w) of a downsampling layer.

  For `DiffStride` the `strides` weight itself (differentiable; a shared
  (1,) stride is used for both axes), else the layer's fixed strides.
  """
  if isinstance(layer, pooling.DiffStride):
    return stride_pair_tensor(layer.strides)
  if isinstance(layer, pooling.FixedSpectralPooling):
    return tf.constant(stride_pair(layer.get_config()['strides']), tf.float32)
  return tf.constant(stride_pair(layer.strides), tf.float32)


def _stage_costs(stages: Sequence[Stage], form: str) -> Optional[List[float]]:
  if form not in FORMS:
    raise ValueError(f'Unknown complexity form {form!r}: use one of {FORMS}.')
  if form == 'paper':
    return None
  costs = [getattr(stage, form) for stage in stages[1:]]
  if sum(costs) <= 0:
    raise ValueError(
        f"form={form!r} needs convolutions after the downsampling layers; "
        'this network has none. Use the paper form.')
  return costs


def penalty_from_strides(strides: Sequence[tf.Tensor],
                         costs: Optional[Sequence[float]] = None) -> tf.Tensor:
  """sum_l w_l prod_{j<=l} 1 / (S_h^j S_w^j) for float32[2] strides.

  Args:
    strides: L tensors (S_h, S_w), in execution order.
    costs: None (all w_l = 1: the paper's form), or L non-negative costs,
      normalised here to w_l = L * c_l / sum(c).

  Returns:
    A float32 scalar; 0 for L = 0.
  """
  total = tf.constant(0.0, tf.float32)
  relative_size = tf.constant(1.0, tf.float32)
  if costs is not None:
    scale = len(costs) / float(sum(costs))
  for i, s in enumerate(strides):
    relative_size = relative_size / (s[0] * s[1])
    weight = 1.0 if costs is None else costs[i] * scale
    total += weight * relative_size
  return total


def complexity_penalty(model: keras.layers.Layer,
                       form: str = 'paper',
                       stages: Optional[Sequence[Stage]] = None) -> tf.Tensor:
  """The complexity penalty of a built model (float32 scalar, no lambda).

  Args:
    model: a built network (any of this package's ResNets, or a Sequential /
      Functional model of Conv2D and pooling layers).
    form: 'paper', 'compute' or 'memory' (see the module docstring).
    stages: `network_stages(model)`, to avoid walking the network again.

  Returns:
    The penalty, differentiable in every DiffStride `strides` weight; 0 if the
    model has no downsampling layer.
  """
  stages = network_stages(model) if stages is None else stages
  costs = _stage_costs(stages, form)
  return penalty_from_strides([stage_strides(s.layer) for s in stages[1:]],
                              costs)


def _output_size(layer, size: Tuple[int, int],
                 strides: Tuple[float, float]) -> Tuple[int, int]:
  """Spatial size after a resizing layer, at the given (current) strides."""
  h, w = size
  if isinstance(layer, pooling.DiffStride):
    config = layer.get_config()
    return pooling.diffstride_output_size(
        h, w, strides, smoothness_factor=layer.smoothness_factor,
        cropping=config['cropping'], shared_stride=layer.shared_stride)
  channels = 1
  if isinstance(layer, keras.layers.Conv2D):
    channels = int(layer.kernel.shape[2])
  channels_first = getattr(layer, 'data_format', None) == 'channels_first'
  shape = (1, channels, h, w) if channels_first else (1, h, w, channels)
  out = layer.compute_output_shape(shape)
  return (int(out[2]), int(out[3])) if channels_first else (int(out[1]),
                                                            int(out[2]))


def _sized_walk(model, input_size):
  """Yields (kind, layer, size_in, size_out) in execution order, at the
  current strides; shared layers are visited once."""
  size = tuple(int(v) for v in input_size)
  seen = set()
  for kind, layer in _walk(model):
    key = (kind, id(layer))
    if key in seen:
      continue
    seen.add(key)
    if kind == 'conv':
      yield kind, layer, size, size
      continue
    strides = (tuple(float(v) for v in stage_strides(layer).numpy())
               if hasattr(layer, 'strides') else (1.0, 1.0))
    out = _output_size(layer, size, strides)
    yield kind, layer, size, out
    size = out


def downsampling_sizes(model: keras.layers.Layer, input_size: Tuple[int, int]
                       ) -> List[Tuple[keras.layers.Layer, Tuple[int, int],
                                       Tuple[int, int]]]:
  """[(downsampling layer, (H, W) in, (h', w') out)] in execution order, the
  real map sizes at the current strides for an (H, W) input."""
  return [(layer, size_in, size_out) for kind, layer, size_in, size_out
          in _sized_walk(model, input_size) if kind == 'down']


def conv_macs(model: keras.layers.Layer,
              input_size: Tuple[int, int]) -> float:
  """Multiply-accumulates of the model's convolutions for one example.

  Map sizes are the real ones at the current strides (for DiffStride about
  H / S + 2R, from `diffstride_output_size`), so this is what the network
  costs to run, not the paper's 1 / S idealisation. Dense layers are left out.
  """
  total = 0.0
  for kind, layer, _, size in _sized_walk(model, input_size):
    if kind == 'conv':
      kernel = layer.kernel.shape
      total += float(kernel[0] * kernel[1] * kernel[2] * kernel[3]) * (
          size[0] * size[1])
  return total


def complexity_values(model: keras.layers.Layer,
                      input_size: Optional[Tuple[int, int]] = None
                      ) -> Dict[str, object]:
  """Plain-number description of a built model's complexity, for logs.

  Returns:
    {'paper', 'compute', 'memory': the three penalty forms (no lambda),
     'num_downsampling': L, 'strides': [[S_h, S_w] per downsampling layer],
     'conv_mmacs': millions of convolution multiply-accumulates per example
     at the real map sizes (only with `input_size` (H, W))}.
    {} when the model has no downsampling layer.
  """
  stages = network_stages(model)
  if len(stages) < 2:
    return {}
  values = {}
  for form in FORMS:
    try:
      values[form] = float(complexity_penalty(model, form, stages))
    except ValueError:
      values[form] = None
  values['num_downsampling'] = len(stages) - 1
  values['strides'] = [[float(v) for v in stage_strides(s.layer).numpy()]
                       for s in stages[1:]]
  if input_size is not None:
    values['conv_mmacs'] = conv_macs(model, input_size) / 1e6
  return values


@keras.saving.register_keras_serializable(package='diffstride')
class ComplexityRegularizer(keras.regularizers.Regularizer):
  """`weight * complexity_penalty` as a Keras weight regulariser.

  Put on one stride variable (`attach_regularizer` does it), it ignores that
  variable's value and returns the penalty of the whole network, which reads
  every stride: Keras sums it into `model.losses`, so it is part of the
  training loss and of its gradient.

  Its config holds `weight` and `form` only; the network it reads is set by
  `bind(stages)`. Stride weights do not save their regulariser, so a saved
  model loads without it (inference is unaffected); training re-attaches it.
  """

  def __init__(self, weight: float = 0.0, form: str = 'paper'):
    if form not in FORMS:
      raise ValueError(f'Unknown complexity form {form!r}: use one of '
                       f'{FORMS}.')
    if not np.isfinite(weight) or weight < 0:
      raise ValueError(f'The complexity weight must be >= 0, got {weight!r}.')
    self.weight = float(weight)
    self.form = form
    self._layers = None
    self._costs = None

  def bind(self, stages: Sequence[Stage]) -> 'ComplexityRegularizer':
    self._layers = [stage.layer for stage in stages[1:]]
    self._costs = _stage_costs(stages, self.form)
    return self

  def __call__(self, x):
    del x  # The penalty reads every stride, not only the carrier's.
    if self._layers is None:
      raise ValueError('ComplexityRegularizer is not bound to a network: '
                       'call bind(network_stages(model)).')
    penalty = penalty_from_strides([stage_strides(l) for l in self._layers],
                                   self._costs)
    return self.weight * penalty

  def get_config(self):
    return {'weight': self.weight, 'form': self.form}


def attach_regularizer(model: keras.layers.Layer, weight: float,
                       form: str = 'paper') -> ComplexityRegularizer:
  """Adds `weight * complexity_penalty(model, form)` to the model's losses.

  Call after the model is built (and inside the strategy scope, if any).

  Raises:
    ValueError: if the model has no DiffStride layer with trainable strides.
  """
  stages = network_stages(model)
  carriers = [s.layer for s in stages[1:]
              if isinstance(s.layer, pooling.DiffStride) and
              s.layer.trainable and s.layer.strides.trainable]
  if not carriers:
    raise ValueError(
        'The complexity penalty needs a DiffStride layer with trainable '
        'strides; this model has none (strided convolutions or fixed '
        'pooling have no stride to learn). Set train.complexity_weight = 0.')
  regularizer = ComplexityRegularizer(weight, form).bind(stages)
  carriers[0].strides.regularizer = regularizer
  return regularizer
