"""LearnablePolyphasePooling: learnable polyphase sampling (LPS; Rojas-Gomez,
Lim, Schwing, Do & Yeh, NeurIPS 2022)."""

from typing import Optional

import keras
from keras import ops

from diffstride import antialias
from diffstride import strides as strides_lib
from diffstride.layers.polyphase_pooling import PolyphasePooling

_PACKAGE = 'diffstride'
# Uniform samples are drawn in [_TINY, 1): -log(-log(u)) stays finite.
_TINY = 1e-7


def _positive_number(value, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not value > 0):
    raise ValueError(f'`{name}` must be a number > 0, got {value!r}.')
  return float(value)


def _flag(value, name: str) -> bool:
  if not isinstance(value, bool):
    raise ValueError(f'`{name}` must be True or False, got {value!r}.')
  return value


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LearnablePolyphasePooling(PolyphasePooling):
  """Keeps, per example, the polyphase component a small network scores
  highest.

  "Learnable Polyphase Sampling for Shift Invariant and Equivariant
  Convolutional Networks" (Rojas-Gomez, Lim, Schwing, Do & Yeh, NeurIPS
  2022). APS (`PolyphasePooling`) with learned logits: each of the P = s_h
  s_w polyphase components x_k (the map circularly padded to whole
  multiples of the strides first; optionally low-pass filtered as APS) is
  scored by one network f shared by all components, z_k = f(x_k):

      conv 3 x 3 (C -> hidden) -> ReLU -> conv 3 x 3 (hidden -> hidden, no
      bias) -> mean over rows and columns -> dense (hidden -> 1, no bias)

  the convolutions padding circularly, so z_k does not change when x_k is
  circularly shifted and the logits are permuted, not changed, when the
  input is. The layer's trainable weights are f's.

    * Inference (`training` False or None, the default outside `fit`): the
      component of largest logit, the first of equal ones (exactly APS's
      rule with learned scores): a circularly padded network ending in
      global pooling keeps the same logits for every circular shift of its
      input. No gradient reaches f.
    * Training (`training=True`): the paper's Gumbel-softmax relaxation,
      sum_k w_k x_k with w = softmax((z + g) / temperature), g Gumbel(0, 1)
      noise drawn from the layer's seed generator (`gumbel_noise=False`:
      g = 0, a deterministic softmax). With `hard_training=True`, the
      forward pass keeps the one component of largest w and the gradient is
      that of the soft weights (straight-through).

  A residual layer downsamples its two branches with one instance: the
  shortcut takes the main branch's selection (`select`, `call(x,
  indices=)`), the same indices in inference and the same weights (noise
  included) in training.

  Args:
    strides: whole-number stride, a number or (height, width); >= 1.
    hidden_channels: the width of f's convolutions; >= 1.
    temperature: of the softmax in training; > 0 (low: close to the hard
      selection, with larger gradient variance).
    gumbel_noise: whether training adds Gumbel noise to the logits.
    hard_training: straight-through hard selection in training.
    filter_size: 1 (no filter) to 7, the binomial low-pass filter applied
      before the components are taken (as `PolyphasePooling`).
    seed: of the Gumbel noise (None: from Keras' global seed). Layers given
      the same seed draw the same noise for same-shaped logits, so a
      network's `pooling_kwargs` had better leave it None.
    data_format: 'channels_last' or 'channels_first' (None: Keras' default).

  Input: [B, H, W, C] (channels_last) or [B, C, H, W], H, W and C static.
  Output: [B, ceil(H / s_h), ceil(W / s_w), C] (or channels_first).

  Example:

  >>> layer = LearnablePolyphasePooling(strides=2, hidden_channels=4)
  >>> x = np.random.default_rng(0).standard_normal((2, 8, 8, 3), 'float32')
  >>> layer(x).shape  # Inference: one component per example.
  (2, 4, 4, 3)
  >>> keras.ops.convert_to_numpy(layer.select(x)).shape
  (2,)
  >>> keras.ops.convert_to_numpy(layer.select(x, training=True)).shape
  (2, 4)
  """

  def __init__(self,
               strides: strides_lib.Stride = 2,
               hidden_channels: int = 8,
               temperature: float = 1.0,
               gumbel_noise: bool = True,
               hard_training: bool = False,
               filter_size: int = 1,
               seed: Optional[int] = None,
               data_format: Optional[str] = None,
               **kwargs):
    super().__init__(strides=strides, filter_size=filter_size,
                     data_format=data_format, **kwargs)
    if (isinstance(hidden_channels, bool)
        or not isinstance(hidden_channels, int) or hidden_channels < 1):
      raise ValueError('`hidden_channels` must be an integer >= 1, got '
                       f'{hidden_channels!r}.')
    self.hidden_channels = hidden_channels
    self.temperature = _positive_number(temperature, 'temperature')
    self.gumbel_noise = _flag(gumbel_noise, 'gumbel_noise')
    self.hard_training = _flag(hard_training, 'hard_training')
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, int)):
      raise ValueError(f'`seed` must be None or an integer, got {seed!r}.')
    self.seed = seed
    sub = dict(dtype=self.dtype_policy)
    conv = dict(kernel_size=3, padding='valid', data_format=self.data_format,
                **sub)
    # The scoring network f; its convolutions see circularly padded maps.
    self.scorer_conv1 = keras.layers.Conv2D(hidden_channels, activation='relu',
                                            name='scorer_conv1', **conv)
    # Biases after the first ReLU would add the same number to every
    # logit: none.
    self.scorer_conv2 = keras.layers.Conv2D(hidden_channels, use_bias=False,
                                            name='scorer_conv2', **conv)
    self.scorer_dense = keras.layers.Dense(1, use_bias=False,
                                           name='scorer_dense', **sub)
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    super().build(input_shape)
    channels = input_shape[1 if self._channels_first else 3]
    if channels is None:
      raise ValueError(f'{type(self).__name__} needs a static number of '
                       f'channels, got shape {tuple(input_shape)}.')
    def maps(c):
      return (None, c, None, None) if self._channels_first else (
          None, None, None, c)
    for layer, shape in ((self.scorer_conv1, maps(channels)),
                         (self.scorer_conv2, maps(self.hidden_channels)),
                         (self.scorer_dense, (None, self.hidden_channels))):
      if not layer.built:
        layer.build(shape)

  def _scores(self, components):
    """The logits z: float32 [B, P], f applied to every component."""
    num = components.shape[1]
    maps = ops.reshape(components, (-1,) + tuple(components.shape[2:]))
    pad = lambda t: antialias.pad_spatial(t, ((1, 1), (1, 1)), 'circular',
                                          self._channels_first)
    h = self.scorer_conv2(pad(self.scorer_conv1(pad(maps))))
    h = ops.mean(h, axis=(2, 3) if self._channels_first else (1, 2))
    return ops.reshape(ops.cast(self.scorer_dense(h), 'float32'), (-1, num))

  def _soft_weights(self, logits):
    """The training weights w over the components: float32 [B, P]."""
    if self.gumbel_noise:
      u = keras.random.uniform(ops.shape(logits), minval=_TINY, maxval=1.0,
                               dtype='float32', seed=self.seed_generator)
      logits = logits - ops.log(-ops.log(u))
    weights = ops.softmax(logits / self.temperature, axis=-1)
    if self.hard_training:
      hard = ops.one_hot(ops.argmax(weights, axis=-1), logits.shape[-1],
                         dtype='float32')
      weights = weights + ops.stop_gradient(hard - weights)
    return weights

  def _selection(self, logits, training):
    return self._soft_weights(logits) if training else self._argmax(logits)

  def select(self, inputs, training=None):
    """Each example's selection: in inference the index (row-major (i, j))
    of the component of largest logit, int32 [B]; in training the weights
    of the components, float32 [B, P] (summing to 1)."""
    if not self.built:  # A method, not a Keras call: build here.
      self.build(tuple(inputs.shape))
    return self._selection(self._scores(self._components(inputs)), training)

  def call(self, inputs, indices=None, training=None):
    """The selected components: by this map's logits, or by `indices`
    (another map's `select`: int32 [B] indices, or float [B, P] weights)."""
    components = self._components(inputs)
    if indices is None:
      indices = self._selection(self._scores(components), training)
    indices = ops.convert_to_tensor(indices)
    if 'int' in keras.backend.standardize_dtype(indices.dtype):
      return antialias.component_at(components, ops.stop_gradient(indices))
    return antialias.mix_components(components, indices)

  def get_config(self):
    config = super().get_config()
    config.update(hidden_channels=self.hidden_channels,
                  temperature=self.temperature,
                  gumbel_noise=self.gumbel_noise,
                  hard_training=self.hard_training, seed=self.seed)
    return config
