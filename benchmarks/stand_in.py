"""The free stand-in for DiffStride in the ResNet step benchmarks: a crop to
DiffStride's output size, so the convolutions see maps of the same size and
the downsampling costs nothing. Keras only (no TensorFlow), for every
backend."""

import keras

from diffstride import pooling


class CropStandIn(keras.layers.Layer):
  """Crops to DiffStride's output size at the given strides; no other work."""

  def __init__(self, strides=(2.0, 2.0), data_format='channels_last', **kw):
    super().__init__(**kw)
    self._strides = strides
    if data_format != 'channels_last':
      raise ValueError('The stand-in supports channels_last only.')

  def compute_output_shape(self, input_shape):
    out_h, out_w = pooling.diffstride_output_size(
        input_shape[1], input_shape[2], self._strides)
    return (input_shape[0], out_h, out_w, input_shape[3])

  def call(self, x):
    _, out_h, out_w, _ = self.compute_output_shape(x.shape)
    return x[:, :out_h, :out_w, :]
