"""ResNets whose downsampling can be strided convolutions or pooling layers.

Keras 3 port of the ResNet API of google-research/diffstride: `ResidualLayer`,
`ResnetBlock`, `Resnet`, `resnet18` and `resnet56` take the official
constructor arguments. With `pooling_cls=None` the networks downsample with
strided convolutions; with a pooling class (`DiffStride`,
`FixedSpectralPooling`, `SpatialPooling` or any layer taking `strides=` and
`data_format=`) the convolutions are unstrided and the stride goes to the
pooling layer, so `pooling_cls=DiffStride` gives a ResNet with learned strides.

    from diffstride import pooling, resnet
    model = resnet.resnet18(num_output_classes=10, channels_first=False,
                            pooling_cls=pooling.DiffStride)
    logits = model(images)  # images: [B, H, W, 3] -> logits: [B, 10]

Data formats. The network input is always an image batch [B, H, W, C]; with
`channels_first=True` (the official default) it is transposed to [B, C, H, W]
and every layer runs channels_first. TensorFlow's CPU kernels do not implement
NCHW convolutions ("The Conv2D op currently only supports the NHWC tensor
format on the CPU"), so on a CPU-only machine use `channels_first=False`.
The pooling layers of this package work in both formats on any device.

Differences from the official code (all deliberate):
  * `training=None` is the default of every `call` (the Keras convention:
    inference unless a training flag is given or propagated by `fit`); the
    official `ResidualLayer.call` defaulted to `training=True`.
  * Base-layer keyword arguments (`name`, `trainable`, `dtype`) given to
    `Resnet` or `ResnetBlock` configure that layer itself; all other keyword
    arguments go down to the blocks / residual layers, as in the official code.
    A `dtype` (policy) is propagated to every sublayer.
  * `pooling_cls` is stored in configs by name (e.g. 'DiffStride') so models
    save to and load from `.keras` files; see `pooling_cls_name`.

The networks run on TensorFlow, JAX and PyTorch; a `Resnet` keeps its
DiffStride layers' output sizes current in compiled training itself
(`diffstride.sizes.track_sizes`), so `jit_compile=True` works with learned
strides.

The pooling classes known by name are those of the registry of downsampling
methods (`diffstride.methods`). Gin registration of these classes lives in
the experiment harness (`diffstride.experiments.configurables`).
"""

from typing import Any, Dict, Optional, Sequence

import keras

from diffstride import methods
from diffstride import sizes as sizes_lib
from diffstride import strides as strides_lib
from diffstride.model_layers import all_layers
from diffstride.layers.spatial_padding import SpatialPadding
from diffstride.resnet_blocks import batch_norm
from diffstride.resnet_blocks import build_chain
from diffstride.resnet_blocks import chain_output_shape
from diffstride.resnet_blocks import conv2d
from diffstride.resnet_blocks import data_format
from diffstride.pooling_classes import pooling_cls_name
from diffstride.pooling_classes import pooling_kwargs_of
from diffstride.pooling_classes import resolve_pooling_cls
from diffstride.resnet_blocks import split_kwargs
from diffstride.pooling_classes import uses_pooling_layer
from diffstride.resnet_blocks import ResidualLayer
from diffstride.resnet_blocks import ResnetBlock
from diffstride.resnet_blocks import Stride
from diffstride.resnet_blocks import training_kwargs

_PACKAGE = 'diffstride'
# The names of the blocks and helpers, kept importable from here.
__all__ = ['batch_norm', 'conv2d', 'data_format', 'pooling_cls_name',
           'pooling_kwargs_of', 'resolve_pooling_cls', 'ResidualLayer',
           'ResnetBlock', 'Resnet', 'resnet18', 'resnet56']


def _float32_head(sub: Dict[str, Any]) -> Dict[str, Any]:
  """The output layer's keyword arguments: under a mixed-precision policy it
  computes in float32, so the logits (and the loss and metrics reading them)
  are float32, as Keras' mixed-precision guide recommends."""
  policy = sub.get('dtype')
  if policy is not None and policy.compute_dtype != policy.variable_dtype:
    return dict(sub, dtype='float32')
  return sub


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Resnet(keras.Model):
  """A ResNet: stem, one `ResnetBlock` per stage, global pooling, dense head.

  Layers, in order (`model.layers`): [Permute to channels_first if
  `channels_first`], ZeroPadding2D(1), Conv2D(filters[0], 3 x 3, 'valid',
  stride strides[0] unless `pooling_cls`), [pooling_cls(strides[0])],
  BatchNormalization, ReLU, then (with `stem='imagenet'`: a 7 x 7 stem
  convolution padded by 3, and 3 x 3 max pooling of stride 2 after the ReLU) for stage i = 0, 1, ... a
  `ResnetBlock(filters[i + 1], strides[i + 1], project_first=i not in id_only)`,
  GlobalAveragePooling2D, Flatten, Dense(num_output_classes,
  output_activation). Keyword arguments other than `name`, `trainable` and
  `dtype` go to every `ResnetBlock` (and so to every `ResidualLayer`): e.g.
  `num_layers` and `kernel_size` (required), or `conv_padding='circular'`
  (every convolution and the max pooling pad by wrapping around).

  BlurPool, APS and LPS (placement 'after_activation' in
  `diffstride.methods`) go where their papers put them: the stem's
  convolution at stride 1, BN, ReLU, then the layer at strides[0] (none at
  stride 1); the ImageNet stem's max pooling at stride 1, then the layer at
  stride 2.

  `stem_pooling=False` leaves out the stem's downsampling layer when
  strides[0] is 1: the stem keeps the input's resolution, as in the
  strided-convolution ResNet, and DiffStride learns the stages' strides only
  (by default an 'after_conv' method's layer is there at stride 1 too, so
  DiffStride learns the stem's stride from its minimum N / (N - R)).

  Input: images [B, H, W, C] whatever `channels_first` (they are transposed
  inside); output: [B, num_output_classes], logits unless
  `output_activation` is given; float32 under mixed precision too.

  `channels_first=True` (the official default) needs a device with NCHW
  convolutions (a GPU with TensorFlow): use `channels_first=False` on CPU.
  """

  def __init__(self,
               filters: Sequence[int],
               strides: Sequence[Stride],
               num_output_classes: int,
               output_activation: Optional[str] = None,
               id_only: Sequence[int] = (),
               channels_first: bool = True,
               pooling_cls=None,
               weight_decay: float = 5e-3,
               stem: str = 'cifar',
               pooling_kwargs: Optional[Dict[str, Any]] = None,
               stem_pooling: bool = True,
               **kwargs):
    filters = list(filters)
    strides = list(strides)
    if stem not in ('cifar', 'imagenet'):
      raise ValueError(f"`stem` must be 'cifar' or 'imagenet', got {stem!r}.")
    if not stem_pooling and strides and any(
        s != 1.0 for s in strides_lib.stride_pair(strides[0])):
      raise ValueError(
          f'`stem_pooling=False` needs a stem stride of 1 (strides[0] is '
          f'{strides[0]!r}): the stem has no downsampling layer then.')
    if len(filters) != len(strides):
      raise ValueError(f'The number of `filters` ({len(filters)}) should match'
                       f' the number of `strides` ({len(strides)}).')
    if not filters:
      raise ValueError('`filters` and `strides` must not be empty.')
    own, block_kwargs = split_kwargs(kwargs)
    super().__init__(**own)
    self.filters = filters
    self.block_strides = strides
    self.num_output_classes = num_output_classes
    self.output_activation = output_activation
    self.id_only = list(id_only)
    self.channels_first = bool(channels_first)
    self.pooling_cls = resolve_pooling_cls(pooling_cls)
    self.weight_decay = weight_decay
    self.stem = stem
    self.pooling_kwargs = dict(pooling_kwargs or {})
    self.stem_pooling = bool(stem_pooling)
    self._block_kwargs = block_kwargs

    df = data_format(self.channels_first)
    sub = dict(dtype=self.dtype_policy)
    stack = []
    if self.channels_first:
      stack.append(keras.layers.Permute((3, 1, 2), **sub))
    # CIFAR stem: 3 x 3 conv. ImageNet stem: 7 x 7 conv (+ max pooling below).
    kernel = 7 if stem == 'imagenet' else 3
    circular = block_kwargs.get('conv_padding', 'zero') == 'circular'
    stack.append(SpatialPadding(kernel // 2, 'circular', df, **sub) if circular
                 else keras.layers.ZeroPadding2D(padding=kernel // 2,
                                                 data_format=df, **sub))
    stem_pooling = self.stem_pooling and uses_pooling_layer(self.pooling_cls,
                                                            strides[0])
    stack.append(conv2d(
        filters[0], kernel, padding='valid',
        strides=(1, 1) if self.pooling_cls is not None else strides[0],
        channels_first=self.channels_first, weight_decay=weight_decay, **sub))
    # 'after_conv' methods (DiffStride...) pool right after the convolution,
    # 'after_activation' ones (BlurPool, APS, LPS) after its BN-ReLU.
    late = methods.placement_of(self.pooling_cls) == 'after_activation'
    pool = lambda stride: self.pooling_cls(strides=stride, data_format=df,
                                           **sub, **self.pooling_kwargs)
    if stem_pooling and not late:
      stack.append(pool(strides[0]))
    # A pre-activation network normalises inside its blocks and once more
    # before the head; the stem's BN-ReLU then belongs to the first block.
    preactivation = bool(block_kwargs.get('preactivation', False))
    bn_kw = dict(synchronized=bool(
        block_kwargs.get('synchronized_batch_norm', False)), **sub)
    if not preactivation:
      stack.append(batch_norm(self.channels_first, **bn_kw))
      stack.append(keras.layers.ReLU(**sub))
    if stem_pooling and late:
      stack.append(pool(strides[0]))
    self._max_pool_pooling = None
    if stem == 'imagenet':
      # With an 'after_activation' method: max pooling at stride 1, then the
      # method's layer at stride 2 (Zhang, 2019).
      max_stride = 1 if (late and self.pooling_cls is not None) else 2
      if circular:
        stack.append(SpatialPadding(1, 'circular', df, **sub))
      stack.append(keras.layers.MaxPooling2D(
          3, strides=max_stride, padding='valid' if circular else 'same',
          data_format=df, **sub))
      if max_stride == 1:
        self._max_pool_pooling = pool(2)
        stack.append(self._max_pool_pooling)
    for i, (num_filters, stride) in enumerate(zip(filters[1:], strides[1:])):
      stack.append(ResnetBlock(
          filters=num_filters, strides=stride,
          project_first=(i not in self.id_only),
          channels_first=self.channels_first, weight_decay=weight_decay,
          pooling_cls=self.pooling_cls, pooling_kwargs=self.pooling_kwargs,
          **sub, **block_kwargs))
    if preactivation:
      stack.append(batch_norm(self.channels_first, **bn_kw))
      stack.append(keras.layers.ReLU(**sub))
    stack.extend([
        keras.layers.GlobalAveragePooling2D(data_format=df, **sub),
        keras.layers.Flatten(**sub),
        keras.layers.Dense(
            num_output_classes,
            activation=output_activation,
            kernel_initializer='he_normal',
            kernel_regularizer=keras.regularizers.L2(weight_decay),
            bias_regularizer=keras.regularizers.L2(weight_decay),
            **_float32_head(sub)),
    ])
    self._stack = stack
    # fit / evaluate / predict / export keep DiffStride's static output sizes
    # current when compiled with XLA or jax.jit (see diffstride.sizes).
    sizes_lib.track_sizes(self)

  @property
  def stack(self) -> list:
    """The network's own layers in the order they run: [Permute],
    ZeroPadding2D (SpatialPadding if circular), the stem convolution, [the
    stem's pooling layer: here, or after the ReLU for BlurPool, APS, LPS],
    [BatchNormalization, ReLU], [MaxPooling2D], one `ResnetBlock` per stage,
    [BatchNormalization, ReLU], GlobalAveragePooling2D, Flatten, Dense."""
    return list(self._stack)

  @property
  def stem_conv(self) -> keras.layers.Conv2D:
    """The stem convolution (its kernel is [k, k, input channels, filters])."""
    return next(l for l in self._stack if isinstance(l, keras.layers.Conv2D))

  def downsampling_positions(self) -> Dict[int, keras.layers.Layer]:
    """{index into `strides`: the pooling layer downsampling there}.

    Index 0 is the stem, i >= 1 the i-th block (whose first residual layer
    holds the pooling layer). Empty when the convolutions are strided.
    """
    positions = {}
    block = 0
    for layer in self._stack:
      if isinstance(layer, ResnetBlock):
        block += 1
        first = layer.layers[0]
        if first.pooling is not None:
          positions[block] = first.pooling
      elif (methods.for_layer(layer) is not None
            and layer is not self._max_pool_pooling):
        positions[0] = layer
    return positions

  def build(self, input_shape):
    build_chain(self._stack, input_shape)

  def compute_output_shape(self, input_shape):
    return chain_output_shape(self._stack, input_shape)

  def call(self, inputs, training=None):
    x = inputs
    for layer in self._stack:
      # BatchNorm, the blocks, and a pooling layer whose call takes the flag
      # (LPS: soft selection in training).
      x = layer(x, **training_kwargs(layer.call, training))
    return x

  def get_config(self):
    config = {
        'name': self.name,
        'trainable': self.trainable,
        'dtype': keras.saving.serialize_keras_object(self.dtype_policy),
    }
    config.update(
        filters=self.filters,
        strides=self.block_strides,
        num_output_classes=self.num_output_classes,
        output_activation=self.output_activation,
        id_only=self.id_only,
        channels_first=self.channels_first,
        pooling_cls=pooling_cls_name(self.pooling_cls),
        weight_decay=self.weight_decay,
        stem=self.stem,
        pooling_kwargs=self._pooling_kwargs_for_config(),
        stem_pooling=self.stem_pooling,
        **self._block_kwargs)
    return config

  def _pooling_kwargs_for_config(self) -> Dict[str, Any]:
    if self.pooling_kwargs or self.pooling_cls is None:
      return dict(self.pooling_kwargs)
    # The first pooling layer (the stem's, else a block's), whichever class
    # built it (gin passes a same-named subclass of a registered class).
    for layer in all_layers(self):
      if layer is not self and (isinstance(layer, self.pooling_cls)
                                or methods.for_layer(layer) is not None):
        return pooling_kwargs_of(layer)
    return {}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if isinstance(config.get('dtype'), dict):
      config['dtype'] = keras.saving.deserialize_keras_object(config['dtype'])
    return cls(**config)


def resnet18(strides: Optional[Sequence[Stride]] = None, **kwargs) -> Resnet:
  """ResNet-18: filters [64, 64, 128, 256, 512], two 3 x 3 layers per block.

  Args:
    strides: the stem's and the four stages' strides (default [1, 1, 2, 2, 2]).
    **kwargs: `Resnet` arguments (`num_output_classes` is required).

  Returns:
    A `Resnet` mapping [B, H, W, 3] images to [B, num_output_classes]. The
    first stage is an identity block (no projection, no downsampling).
  """
  strides = [1, 1, 2, 2, 2] if strides is None else strides
  filters = [64, 64, 128, 256, 512]
  return Resnet(filters, strides, id_only=[0], num_layers=2, kernel_size=3,
                **kwargs)


def resnet56(strides: Optional[Sequence[Stride]] = None, **kwargs) -> Resnet:
  """ResNet-56 (CIFAR): filters [16, 16, 32, 64], nine 3 x 3 layers per block.

  Args:
    strides: the stem's and the three stages' strides (default [1, 1, 2, 2]).
    **kwargs: `Resnet` arguments (`num_output_classes` is required).

  Returns:
    A `Resnet` mapping [B, H, W, 3] images to [B, num_output_classes]; every
    stage starts with a projection layer.
  """
  filters = [16, 16, 32, 64]
  strides = [1, 1, 2, 2] if strides is None else strides
  return Resnet(filters, strides, num_layers=9, kernel_size=3, **kwargs)

