"""The building blocks of the ResNets: residual layers and stages.

`ResidualLayer` (two convolutions and a shortcut, with the stage's
downsampling in one of them) and `ResnetBlock` (a stage: `num_layers`
residual layers, the first one downsampling). Pooling classes are stored by
name (`diffstride.pooling_classes`). `diffstride.resnet` builds the networks
from them.
"""

import functools
import inspect
from typing import Any, Dict, Optional, Tuple, Union

import keras

from diffstride import methods
from diffstride.layers.spatial_padding import SpatialPadding
from diffstride.pooling_classes import pooling_cls_name
from diffstride.pooling_classes import pooling_kwargs_of
from diffstride.pooling_classes import resolve_pooling_cls
from diffstride.pooling_classes import uses_pooling_layer

Number = Union[float, int]
Stride = Union[Number, Tuple[Number, Number]]
_PACKAGE = 'diffstride'
# Keyword arguments that configure a container layer itself rather than the
# layers it builds.
BASE_LAYER_KWARGS = ('name', 'trainable', 'dtype')


def data_format(channels_first: bool = True) -> str:
  """'channels_first' or 'channels_last'."""
  return 'channels_first' if channels_first else 'channels_last'


def split_kwargs(kwargs: Dict[str, Any]):
  """(kwargs for the container layer itself, kwargs for what it builds)."""
  own = {k: v for k, v in kwargs.items() if k in BASE_LAYER_KWARGS}
  rest = {k: v for k, v in kwargs.items() if k not in BASE_LAYER_KWARGS}
  return own, rest


def chain_output_shape(layers, input_shape, build: bool = False):
  """Output shape of `layers` applied in sequence (building them if `build`).

  Shapes are propagated with `compute_output_shape`, so a layer after a
  `DiffStride` sees unknown spatial dimensions.
  """
  shape = tuple(input_shape)
  for layer in layers:
    if build and not layer.built:
      layer.build(shape)
    shape = tuple(layer.compute_output_shape(shape))
  return shape


def build_chain(layers, input_shape):
  """Builds `layers` in sequence from `input_shape`; returns the output shape."""
  return chain_output_shape(layers, input_shape, build=True)


@functools.lru_cache(maxsize=None)
def _takes_training(function) -> bool:
  return 'training' in inspect.signature(function).parameters


def training_kwargs(method, training) -> Dict[str, Any]:
  """{'training': training} if `method` (e.g. a layer's `call`) takes a
  `training` argument, else {}. Passed explicitly: a layer called inside
  another's `stateless_call` (JAX's training step) does not inherit the
  flag from Keras' call context. The signature is read once per function,
  not at every call."""
  function = getattr(method, '__func__', method)
  return {'training': training} if _takes_training(function) else {}


CONV_PADDINGS = ('zero', 'circular')


def check_conv_padding(conv_padding: str, kernel_size) -> str:
  """'zero' (Keras' 'same') or 'circular' (odd kernels only)."""
  if conv_padding not in CONV_PADDINGS:
    raise ValueError(f'`conv_padding` must be one of {CONV_PADDINGS}, got '
                     f'{conv_padding!r}.')
  sizes = kernel_size if isinstance(kernel_size, (tuple, list)) else (
      kernel_size,)
  if conv_padding == 'circular' and any(int(k) % 2 == 0 for k in sizes):
    raise ValueError("`conv_padding='circular'` needs odd kernel sizes, got "
                     f'kernel_size={kernel_size!r}.')
  return conv_padding


def conv2d(filters: int, kernel_size, *, strides=(1, 1), padding='same',
           channels_first: bool = True, weight_decay: float = 0.0,
           **kwargs) -> keras.layers.Conv2D:
  """Conv2D without bias, he_normal init and L2(`weight_decay`) on the kernel."""
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding=padding,
      kernel_initializer='he_normal',
      kernel_regularizer=keras.regularizers.L2(weight_decay),
      data_format=data_format(channels_first),
      use_bias=False,
      **kwargs)


def batch_norm(channels_first: bool = True, synchronized: bool = False,
               **kwargs) -> keras.layers.BatchNormalization:
  """BatchNormalization with momentum 0.9 and epsilon 1e-5 over channels.

  `synchronized=True` (`Resnet(..., synchronized_batch_norm=True)`; in gin
  `Resnet.synchronized_batch_norm = True`, or `resnet18.` for ResNet-18) computes the
  batch statistics over the global batch across all replicas of a
  tf.distribute strategy, so that training on N workers computes what one
  worker would on the same global batch; the default, per-replica statistics,
  is the usual data-parallel BatchNorm and needs no communication.
  """
  return keras.layers.BatchNormalization(
      axis=1 if channels_first else 3, momentum=0.9, epsilon=1e-5,
      synchronized=synchronized, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualLayer(keras.layers.Layer):
  """A residual layer: an identity or a projection ResNet basic block.

  Main branch: conv(k x k, stride) -> pooling -> BN -> ReLU -> conv(k x k) ->
  BN. Shortcut: the input itself, or with `project=True`
  conv(1 x 1, stride) -> pooling -> BN. Output: ReLU(main + shortcut).
  With `preactivation=True` (He et al., 2016): p = ReLU(BN(x)); main:
  conv(p) -> pooling -> BN -> ReLU -> conv; shortcut: x, or
  conv1x1(p) -> pooling; output: main + shortcut. `Resnet(...,
  preactivation=True)` then drops the stem's BN-ReLU and adds one before the
  head.

  With `pooling_cls` the convolutions are unstrided and a single
  `pooling_cls(strides=strides, data_format=...)` layer downsamples both
  branches (so a `DiffStride` learns one stride for the two). Where depends
  on the method's placement (`diffstride.methods`): 'after_conv' as above;
  'after_activation' (BlurPool, APS, LPS) after the first BN-ReLU of the main
  branch (conv -> BN -> ReLU -> pooling -> conv -> BN) and before the
  shortcut's 1 x 1 convolution; a pooling layer that chooses per example
  (`PolyphasePooling.select`, `LearnablePolyphasePooling.select`) makes
  the shortcut keep the main branch's choice (the training flag goes to a
  `select` that takes one: LPS's soft weights in training). Without
  `project` there is no downsampling at all: `strides` and `pooling_cls`
  are ignored and `filters` must equal the number of input channels. `conv_padding='circular'` pads the 3 x 3 convolutions by
  wrapping around (with APS, or LPS in inference: logits invariant to
  circular shifts).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W] (channels_first).
  Output: [B, H', W', filters] or [B, filters, H', W'] where (H', W') is
  (H, W) for an identity layer, ceil((H, W) / strides) for strided
  convolutions or `SpatialPooling`, and the pooling layer's output size
  otherwise (dynamic for `DiffStride`: about H / S + 2R).
  """

  def __init__(self,
               filters: int,
               kernel_size,
               strides: Stride = (1, 1),
               pooling_cls=None,
               project: bool = False,
               channels_first: bool = True,
               weight_decay: float = 5e-3,
               pooling_kwargs: Optional[Dict[str, Any]] = None,
               preactivation: bool = False,
               synchronized_batch_norm: bool = False,
               conv_padding: str = 'zero',
               **kwargs):
    super().__init__(**kwargs)
    self.conv_padding = check_conv_padding(conv_padding, kernel_size)
    self.pooling_kwargs = dict(pooling_kwargs or {})
    self.preactivation = bool(preactivation)
    self.synchronized_batch_norm = bool(synchronized_batch_norm)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.pooling_cls = resolve_pooling_cls(pooling_cls)
    self.project = bool(project)
    self.channels_first = bool(channels_first)
    self.weight_decay = weight_decay

    # Identity layers do not downsample, with or without a pooling class.
    active_strides = strides if self.project else (1, 1)
    active_pooling = (self.pooling_cls if self.project and uses_pooling_layer(
        self.pooling_cls, active_strides) else None)
    self.pool_after_activation = (
        methods.placement_of(self.pooling_cls) == 'after_activation')
    sub = dict(dtype=self.dtype_policy)
    bn_kw = dict(synchronized=self.synchronized_batch_norm, **sub)
    conv_kw = dict(channels_first=self.channels_first,
                   weight_decay=weight_decay, **sub)
    if active_pooling is not None:
      conv_strides = (1, 1)
      # One instance for both branches: DiffStride learns a single stride.
      self.pooling = active_pooling(
          strides=active_strides, data_format=data_format(channels_first),
          **sub, **self.pooling_kwargs)
    else:
      conv_strides = active_strides
      self.pooling = None
    # Pre-activation (He et al. 2016, "Identity mappings"): BN-ReLU before
    # each convolution, the projection shortcut reads the pre-activated
    # input, no BN after the last convolution and no ReLU after the sum.
    self.bn_in = (batch_norm(self.channels_first, **bn_kw)
                  if self.preactivation else None)
    padding = 'same' if self.conv_padding == 'zero' else 'valid'
    size = (kernel_size[0] if isinstance(kernel_size, (tuple, list))
            else kernel_size)
    self.circular_padding = (
        SpatialPadding(int(size) // 2, 'circular', data_format(channels_first),
                       **sub) if self.conv_padding == 'circular' else None)
    self.strided_conv = conv2d(filters, kernel_size, strides=conv_strides,
                               padding=padding, **conv_kw)
    self.bn1 = batch_norm(self.channels_first, **bn_kw)
    self.unstrided_conv = conv2d(filters, kernel_size, strides=(1, 1),
                                 padding=padding, **conv_kw)
    self.bn2 = (None if self.preactivation
                else batch_norm(self.channels_first, **bn_kw))
    if self.project:
      self.shortcut_conv = conv2d(filters, 1, strides=conv_strides,
                                  padding='valid', **conv_kw)
      self.shortcut_bn = (None if self.preactivation
                          else batch_norm(self.channels_first, **bn_kw))
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def _late_pooling(self) -> bool:
    return self.pooling is not None and self.pool_after_activation

  def main_branch_layers(self):
    """Layers of the main branch, in order (the pooling layer is shared).
    With circular padding the 3 x 3 convolutions are 'valid' and see maps
    padded in `call`: shapes are propagated through the padding too."""
    late = self._late_pooling()
    layers = [self.bn_in, self.circular_padding, self.strided_conv,
              None if late else self.pooling, self.bn1,
              self.pooling if late else None, self.circular_padding,
              self.unstrided_conv, self.bn2]
    return [layer for layer in layers if layer is not None]

  def shortcut_layers(self):
    """Layers of the shortcut branch, in order; [] for an identity layer."""
    if not self.project:
      return []
    late = self._late_pooling()
    layers = [self.pooling if late else None, self.shortcut_conv,
              None if late else self.pooling, self.shortcut_bn]
    return [layer for layer in layers if layer is not None]

  def _pool(self, x, indices=None, training=None):
    """(pooled x, the per-example choice of a pooling layer that selects
    (`select`), else None); `indices` reuses a choice. `training` goes to
    `select` where it takes it (LPS: soft weights in training)."""
    if hasattr(self.pooling, 'select'):
      if indices is None:
        indices = self.pooling.select(
            x, **training_kwargs(self.pooling.select, training))
      return self.pooling(x, indices=indices), indices
    return self.pooling(x), None

  def build(self, input_shape):
    build_chain(self.main_branch_layers(), input_shape)
    build_chain(self.shortcut_layers(), input_shape)

  def compute_output_shape(self, input_shape):
    return chain_output_shape(self.main_branch_layers(), input_shape)

  def call(self, inputs, training=None):
    # Pre-activation: both convolution paths read BN-ReLU(x); an identity
    # shortcut still carries x itself.
    conv_input = inputs
    if self.preactivation:
      conv_input = keras.ops.relu(self.bn_in(inputs, training=training))
    late = self._late_pooling()
    pad = self.circular_padding or (lambda t: t)
    x = self.strided_conv(pad(conv_input))
    if self.pooling is not None and not late:
      x = self.pooling(x)
    x = keras.ops.relu(self.bn1(x, training=training))
    indices = None
    if late:
      x, indices = self._pool(x, training=training)
    x = self.unstrided_conv(pad(x))
    if self.bn2 is not None:
      x = self.bn2(x, training=training)
    if self.project:
      shortcut = conv_input
      if late:
        shortcut, _ = self._pool(shortcut, indices, training)
      shortcut = self.shortcut_conv(shortcut)
      if self.pooling is not None and not late:
        shortcut = self.pooling(shortcut)
      if self.shortcut_bn is not None:
        shortcut = self.shortcut_bn(shortcut, training=training)
    else:
      shortcut = inputs
    if self.preactivation:
      return x + shortcut
    return keras.ops.relu(x + shortcut)

  def get_config(self):
    config = super().get_config()
    config.update(
        filters=self.filters,
        kernel_size=self.kernel_size,
        strides=self.strides,
        pooling_cls=pooling_cls_name(self.pooling_cls),
        project=self.project,
        channels_first=self.channels_first,
        weight_decay=self.weight_decay,
        pooling_kwargs=(self.pooling_kwargs or
                        pooling_kwargs_of(self.pooling)),
        preactivation=self.preactivation,
        synchronized_batch_norm=self.synchronized_batch_norm,
        conv_padding=self.conv_padding)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResnetBlock(keras.layers.Layer):
  """A stack of `num_layers` residual layers with the same number of filters.

  Only the first layer may downsample: it is a projection layer (strided or
  pooled by `strides`) when `project_first`, an identity layer otherwise; all
  the others are identity layers. `block.layers` lists the residual layers.

  Keyword arguments other than `name`, `trainable` and `dtype` go to every
  `ResidualLayer` (e.g. `kernel_size` (required), `pooling_cls`,
  `channels_first`, `weight_decay`).

  Input: [B, H, W, C] or [B, C, H, W]; output: [B, H', W', filters] or
  [B, filters, H', W'], (H', W') as for the first `ResidualLayer`. With
  `project_first=False`, C must equal `filters`.
  """

  def __init__(self,
               filters: int,
               strides: Stride,
               num_layers: int = 2,
               project_first: bool = True,
               **kwargs):
    own, residual_kwargs = split_kwargs(kwargs)
    super().__init__(**own)
    if int(num_layers) < 1:
      raise ValueError(f'`num_layers` must be >= 1, got {num_layers!r}.')
    self.filters = filters
    self.block_strides = strides
    self.num_layers = int(num_layers)
    self.project_first = bool(project_first)
    residual_kwargs['pooling_cls'] = resolve_pooling_cls(
        residual_kwargs.get('pooling_cls'))
    self._residual_kwargs = residual_kwargs
    self._residual_layers = [
        ResidualLayer(filters=filters, strides=strides,
                      project=(i == 0 and self.project_first),
                      dtype=self.dtype_policy, **residual_kwargs)
        for i in range(self.num_layers)
    ]

  @property
  def layers(self):
    """The residual layers, in order."""
    return list(self._residual_layers)

  def build(self, input_shape):
    build_chain(self._residual_layers, input_shape)

  def compute_output_shape(self, input_shape):
    return chain_output_shape(self._residual_layers, input_shape)

  def call(self, inputs, training=None):
    x = inputs
    for layer in self._residual_layers:
      x = layer(x, training=training)
    return x

  def get_config(self):
    config = super().get_config()
    residual_kwargs = dict(self._residual_kwargs)
    residual_kwargs['pooling_cls'] = pooling_cls_name(
        residual_kwargs['pooling_cls'])
    residual_kwargs['pooling_kwargs'] = (
        self._residual_layers[0].get_config()['pooling_kwargs'])
    config.update(filters=self.filters, strides=self.block_strides,
                  num_layers=self.num_layers,
                  project_first=self.project_first, **residual_kwargs)
    return config
