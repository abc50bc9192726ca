"""PolyphasePooling: adaptive polyphase sampling (APS; Chaman & Dokmanic,
CVPR 2021)."""

from typing import Optional

import keras
from keras import ops

from diffstride import antialias
from diffstride import strides as strides_lib
from diffstride.layers import common

_PACKAGE = 'diffstride'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolyphasePooling(keras.layers.Layer):
  """Keeps, per example, the polyphase component with the largest l2 norm.

  "Truly shift-invariant convolutional neural networks" (Chaman & Dokmanic,
  CVPR 2021). For strides (s_h, s_w) the map has s_h s_w polyphase
  components x[i::s_h, j::s_w] (the map circularly padded to whole multiples
  of the strides first); each example keeps the one whose l2 norm over
  rows, columns and channels is largest, ties going to the first in
  row-major (i, j) order. A circular shift of the input then gives a
  circularly shifted output: a network whose convolutions pad circularly
  and that ends in global pooling (`diffstride.resnet.Resnet(...,
  conv_padding='circular')`) gives the same logits for every circular
  shift of its input. `filter_size` > 1 low-pass filters the map first
  (the binomial filter of `BlurPool`, circular padding, stride 1), as
  APS's anti-aliased variant does. No weights; the gradient flows through
  the kept component.

  A residual layer downsamples its two branches with one instance: the
  shortcut keeps the component the main branch chose (`call(x, indices=)`,
  `select`), which the invariance needs.

  Args:
    strides: whole-number stride, a number or (height, width); >= 1.
    filter_size: 1 (no filter) to 7.
    data_format: 'channels_last' or 'channels_first' (None: Keras' default).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W], H and W static.
  Output: [B, ceil(H / s_h), ceil(W / s_w), C] (or channels_first).

  Example:

  >>> x = np.zeros((2, 8, 8, 3), 'float32'); x[:, 1::2, ::2] = 1.0
  >>> layer = PolyphasePooling(strides=2)
  >>> keras.ops.convert_to_numpy(layer.select(x)).tolist()  # (i, j) = (1, 0)
  [2, 2]
  >>> layer(x).shape
  (2, 4, 4, 3)
  """

  def __init__(self,
               strides: strides_lib.Stride = 2,
               filter_size: int = 1,
               data_format: Optional[str] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.strides = strides_lib.integer_strides(strides,
                                                     type(self).__name__)
    self.filter_size = antialias.check_filter_size(filter_size)
    self.data_format = data_format or keras.config.image_data_format()
    self._channels_first = common.check_data_format(self.data_format)

  def build(self, input_shape):
    common.spatial_dims(input_shape, self._channels_first,
                        type(self).__name__)

  def _components(self, x):
    if self.filter_size > 1:
      x = antialias.blur(x, self.filter_size, (1, 1), 'circular',
                         self._channels_first)
    return antialias.polyphase_components(x, self.strides,
                                          self._channels_first)

  def _scores(self, components):
    """What the selection maximises, per example and component: float32
    [B, P]. APS: the squared l2 norm (`LearnablePolyphasePooling`: learned
    logits)."""
    return ops.sum(ops.square(ops.cast(components, 'float32')),
                   axis=(2, 3, 4))

  @staticmethod
  def _argmax(scores):
    """The index of each example's largest score (the first of equal ones):
    int32 [B]."""
    return ops.cast(ops.argmax(scores, axis=1), 'int32')

  def select(self, inputs):
    """The index (row-major (i, j)) of each example's kept component: int32
    [B]."""
    return self._argmax(self._scores(self._components(inputs)))

  def call(self, inputs, indices=None):
    """The kept components: those of largest norm, or those at `indices`
    (int32 [B], e.g. another map's `select`)."""
    components = self._components(inputs)
    if indices is None:
      indices = self._argmax(self._scores(components))
    return antialias.component_at(components, ops.stop_gradient(indices))

  def compute_output_shape(self, inputs_shape, indices_shape=None):
    del indices_shape
    return common.subsampled_shape(inputs_shape, self.strides,
                                   self._channels_first, type(self).__name__)

  def get_config(self):
    config = super().get_config()
    config.update(strides=self.strides, filter_size=self.filter_size,
                  data_format=self.data_format)
    return config
