"""The README's "Using the layer in your own model" example runs as printed,
and every DiffStride layer in it gets a stride gradient (a pooling layer
right after DiffStride would give it exactly zero, as the README warns)."""

import contextlib
import io
import os
import re

import keras
import numpy as np
import tensorflow as tf

import diffstride

_README = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'README.md')


def _first_python_block_after(heading):
  text = open(_README, encoding='utf-8').read()
  section = text[text.index(heading):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_own_model_example_runs_and_every_stride_learns():
  code = _first_python_block_after('## Using the layer in your own model')
  namespace = {}
  with contextlib.redirect_stdout(io.StringIO()) as out:
    exec(compile(code, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  model = namespace['model']
  layers = diffstride.diffstride_layers(model)
  assert len(layers) == 2
  # The example prints the learned strides, one pair per layer.
  assert all(layer.name in out.getvalue() for layer in layers)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
  y = np.arange(4) % 10
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  with tf.GradientTape() as tape:
    loss = loss_fn(y, model(x, training=True))
  grads = tape.gradient(loss, [layer.strides for layer in layers])
  for layer, grad in zip(layers, grads):
    # Pooling right after DiffStride leaves only float noise (~1e-10).
    assert grad is not None and np.all(np.abs(grad.numpy()) > 1e-5), (
        layer.name, grad)
