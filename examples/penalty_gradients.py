r"""Where the complexity penalty pushes: its gradient per DiffStride layer.

    python examples/penalty_gradients.py

Builds the small ResNet of `gin/builtin/*.gin` (filters 16-16-32-64-64, one
residual layer per stage, 32 x 32 grey inputs as on textures) with DiffStride
at each stride initialisation, with and without the stem's layer
(`Resnet.stem_pooling`), and prints, for the paper's and the compute form of
`diffstride.complexity.complexity_penalty`, the penalty P and d P / d log S
per layer (summed over both axes): the push each stride gets from the
penalty, before any training. docs/reproducing.md explains the table.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # This checkout's diffstride, not another install.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
from keras import ops  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import diffstride  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffstride import complexity  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffstride import resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

INITS = ((3, 2, 3), (2, 2, 2))
FORMS = ('paper', 'compute')


def penalty_and_log_gradients(model, form):
  """(P, [d P / d log S of each DiffStride layer, both axes summed])."""
  layers = diffstride.diffstride_layers(model)
  backend = keras.backend.backend()
  if backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    with tf.GradientTape() as tape:
      penalty = complexity.complexity_penalty(model, form)
    grads = tape.gradient(penalty, [l.strides for l in layers])
  elif backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    def value(strides):
      mapping = [(l.strides, s) for l, s in zip(layers, strides)]
      with keras.StatelessScope(state_mapping=mapping):
        return complexity.complexity_penalty(model, form)

    strides = [l.strides.value for l in layers]
    penalty, grads = jax.value_and_grad(value)(strides)
  else:
    for layer in layers:  # autograd adds to .grad: start from none.
      layer.strides.value.grad = None
    penalty = complexity.complexity_penalty(model, form)
    penalty.backward()
    grads = [l.strides.value.grad for l in layers]
  return float(ops.convert_to_numpy(penalty)), [
      float(np.sum(ops.convert_to_numpy(l.strides) * ops.convert_to_numpy(g)))
      for l, g in zip(layers, grads)]


def main():
  print(f'Keras backend: {keras.backend.backend()}')
  print('| init. | stem | form | P | d P / d log S per DiffStride layer, '
        'first to last |')
  print('|---|---|---|---|---|')
  for init in INITS:
    for stem_pooling in (True, False):
      keras.utils.set_random_seed(0)
      model = resnet.Resnet([16, 16, 32, 64, 64], [1, 1, *init], id_only=[0],
                            num_layers=1, kernel_size=3, channels_first=False,
                            num_output_classes=6,
                            pooling_cls=diffstride.DiffStride,
                            stem_pooling=stem_pooling)
      model(np.zeros((1, 32, 32, 1), 'float32'))
      for form in FORMS:
        penalty, grads = penalty_and_log_gradients(model, form)
        print(f'| {init} | {"learned" if stem_pooling else "no layer"} | '
              f'{form} | {penalty:.3f} | '
              + ', '.join(f'{g:.3f}' for g in grads) + ' |')


if __name__ == '__main__':
  main()
