"""BlurPool, PolyphasePooling and DCTDiffStride speed against their baselines.

Forward + backward (d(y . dy)/dx for a fixed random dy) inside one
`tf.function` each, on TensorFlow graph mode, channels_last, timed in the
same run on the same inputs:

  * BlurPool (filter 4, reflect, stride 2) against the algorithm written
    plainly: `tf.pad(mode='REFLECT')` then `tf.nn.depthwise_conv2d` with the
    binomial filter and stride 2;
  * PolyphasePooling (stride 2) against a plain polyphase split: a reshape
    to [B, H/2, 2, W/2, 2, C], the four components' norms, and a gather of
    the largest per example;
  * DCTDiffStride (stride 2) against DiffStride (stride 2, matmul
    implementation) on the same input: both learn their strides, so both
    steps also compute the strides' gradient. Their outputs differ (about
    N/S + R against N/S + 2R per axis, docs/how_it_works.md).

The script checks that BlurPool and APS give their plain version's numbers,
then prints one line per shape: both times (median of --repeats) and the
ratio baseline / ours (above 1: ours is faster).

    python benchmarks/antialias_benchmark.py [--repeats 20]
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from benchmarks import machine  # pylint: disable=g-bad-import-order
import diffstride
from diffstride import antialias

SHAPES = ((64, 32, 32, 64), (64, 16, 16, 128), (16, 64, 64, 64))


def plain_blurpool(x):
  kernel = antialias.binomial_filter(4)[:, :, None, None]
  kernel = tf.constant(np.tile(kernel, (1, 1, x.shape[-1], 1)), tf.float32)
  x = tf.pad(x, [[0, 0], [1, 2], [1, 2], [0, 0]], mode='REFLECT')
  return tf.nn.depthwise_conv2d(x, kernel, strides=[1, 2, 2, 1],
                                padding='VALID')


def plain_aps(x):
  b, h, w, c = x.shape
  parts = tf.reshape(x, [-1, h // 2, 2, w // 2, 2, c])
  parts = tf.reshape(tf.transpose(parts, [0, 2, 4, 1, 3, 5]),
                     [-1, 4, h // 2, w // 2, c])
  index = tf.argmax(tf.reduce_sum(tf.square(parts), axis=[2, 3, 4]), axis=1)
  return tf.gather(parts, index, axis=1, batch_dims=1)


def forward_backward(fn):
  """A tf.function (x, dy) -> (y, d(y . dy)/dx), also differentiating `fn`'s
  trainable variables (a learned stride) when it has any."""
  variables = list(getattr(fn, 'trainable_variables', []))

  @tf.function
  def step(x, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fn(x)
      loss = tf.reduce_sum(y * dy)
    grads = tape.gradient(loss, [x] + variables)
    return y, grads[0] + sum(tf.reduce_sum(g) for g in grads[1:])
  return step


def median_time(step, x, dy, repeats):
  step(x, dy)  # Trace and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    y, dx = step(x, dy)
    dx.numpy()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  print(f'CPU: {machine.cpu_name()}; TensorFlow {tf.__version__}')
  rng = np.random.default_rng(0)
  # (name, layer, baseline, baseline's name, same numbers).
  pairs = (('BlurPool', lambda: diffstride.BlurPool(
      strides=2, filter_size=4, data_format='channels_last'),
            lambda: plain_blurpool, 'plain', True),
           ('APS', lambda: diffstride.PolyphasePooling(
               strides=2, data_format='channels_last'),
            lambda: plain_aps, 'plain', True),
           ('DCT-DS', lambda: diffstride.DCTDiffStride(
               strides=2.0, data_format='channels_last'),
            lambda: diffstride.DiffStride(strides=2.0,
                                          data_format='channels_last',
                                          implementation='matmul'),
            'DiffStride', False))
  for shape in SHAPES:
    x = tf.constant(rng.standard_normal(shape).astype('f4'))
    for name, make_layer, make_baseline, baseline_name, same in pairs:
      layer, other = make_layer(), make_baseline()
      y = layer(x)
      other_y = other(x)
      ours, baseline = forward_backward(layer), forward_backward(other)
      dy = tf.constant(rng.standard_normal(y.shape).astype('f4'))
      dy0 = tf.constant(rng.standard_normal(other_y.shape).astype('f4'))
      if same:
        dy0 = dy
        y, dx = ours(x, dy)
        y0, dx0 = baseline(x, dy)
        np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(dx.numpy(), dx0.numpy(), rtol=1e-5,
                                   atol=1e-5)
      t_ours = median_time(ours, x, dy, args.repeats)
      t_base = median_time(baseline, x, dy0, args.repeats)
      print(f'{name:8s} {str(shape):20s} ours {t_ours * 1e3:8.2f} ms  '
            f'{baseline_name} {t_base * 1e3:8.2f} ms  '
            f'{baseline_name}/ours {t_base / t_ours:5.2f}x')


if __name__ == '__main__':
  main()
