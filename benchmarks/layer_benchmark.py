"""DiffStride layer speed: forward+backward against the straightforward pipeline.

The baseline is the official algorithm written plainly (transpose to channels
first, rfft2d, multiply by the masks, gather the kept rows and columns,
irfft2d, transpose back; TensorFlow's automatic gradients), measured in the
same run on the same inputs. Both compute y and d(y . dy)/d(x, strides) inside
one `tf.function`, given the same upstream gradient dy (a fixed random
tensor), so that no loss computation dilutes the comparison. The script also
checks that both give the same numbers.

    python benchmarks/layer_benchmark.py [--repeats 20] [--shapes 64,32,32,64 ...]

Prints one line per shape with both times and the ratio baseline / ours
(target: >= 4x on the three default shapes). For the matmul implementation it
also prints the arithmetic it does (`matmul_path_flops`), the rate it reaches,
and the rate that 4x would need, next to this machine's float32 matmul peak
measured in the same run (one 1024^3 product): how far the target is from what
dense operators can do here.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from diffstride import masks
from diffstride import pooling

DEFAULT_SHAPES = ((64, 32, 32, 64), (64, 16, 16, 128), (16, 64, 64, 64))


def straightforward_diffstride(x, strides, smoothness=4.0):
  """The official forward pass, channels_last input, no variable assignment."""
  height, width = x.shape[1], x.shape[2]
  s_h, s_w = strides[0], strides[1]
  t_h = tf.maximum(height / s_h, 2.0) / 2.0
  t_w = tf.maximum(width / s_w, 2.0) / 2.0 + 1.0
  rows = masks.mask(t_h, smoothness, masks.row_positions(height))
  cols = masks.mask(t_w, smoothness, masks.column_positions(width))
  spec = tf.signal.rfft2d(tf.transpose(x, (0, 3, 1, 2)))
  spec = spec * tf.complex(cols, 0.0)[None, None, None, :]
  spec = spec * tf.complex(rows, 0.0)[None, None, :, None]
  spec = tf.gather(spec, tf.stop_gradient(tf.where(rows > 0)[:, 0]), axis=2)
  spec = tf.gather(spec, tf.stop_gradient(tf.where(cols > 0)[:, 0]), axis=3)
  return tf.transpose(tf.signal.irfft2d(spec), (0, 2, 3, 1))


def matmul_path_flops(shape, out_shape, num_ramp_cols):
  """Floating-point operations of one forward + backward pass of the matmul path.

  Counts the contractions `diffstride.crop.spectral_crop` performs per
  (batch, channel) map, 2 flops per multiply-add; building the small operators
  is negligible. Forward: x [H, W] -> t [H, 2w'] -> y [h', w']. Backward: dt,
  dx (the adjoint), g = dy t^T (row masks), and the column masks' projections
  s = x f (K ramp columns), u = A s and v = dy g.

  Args:
    shape: (B, H, W, C) of the input; out_shape: (B, h', w', C).
    num_ramp_cols: K, kept rFFT columns whose mask depends on the stride.
  """
  batch, height, width, chans = shape
  out_h, out_w = out_shape[1], out_shape[2]
  k = num_ramp_cols
  width_stage = 2 * out_w * width * height
  rows_stage = out_h * 2 * height * out_w
  forward = width_stage + rows_stage
  backward = (rows_stage + width_stage + rows_stage + 2 * k * width * height +
              2 * out_h * 2 * height * k + 2 * k * out_w * out_h)
  return 2.0 * (forward + backward) * batch * chans


def matmul_peak_flops(size=1024, repeats=10):
  """float32 flop/s of one large square matmul on this machine (best case)."""
  a = tf.random.normal([size, size], seed=2)
  b = tf.random.normal([size, size], seed=3)
  product = tf.function(lambda: tf.matmul(a, b))
  product().numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    product().numpy()
    times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / float(np.median(times))


def num_ramp_columns(layer, out_width):
  """K: the kept rFFT columns whose mask gradient the layer computes."""
  return len(masks.ramp_superset(out_width // 2 + 1, layer.smoothness_factor,
                                 True))


def time_pair(fn_a, fn_b, repeats):
  """Median seconds of fn_a and fn_b, run alternately so that load from
  anything else on the machine hits both alike."""
  for fn in (fn_a, fn_b):  # Trace and warm up.
    fn()
    fn()
  times_a, times_b = [], []
  for _ in range(repeats):
    for fn, times in ((fn_a, times_a), (fn_b, times_b)):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  return float(np.median(times_a)), float(np.median(times_b))


def forward_backward_step(x, dy, strides, forward):
  """A tf.function returning forward(), d/dx and d/dstrides of <y, dy>."""
  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = forward()
    dx, ds = tape.gradient(y, [x, strides], output_gradients=dy)
    return y, dx, ds
  return step


def bench_shape(shape, repeats, implementation='auto'):
  x = tf.random.normal(shape, seed=0)
  layer = pooling.DiffStride(strides=(2.0, 2.0), data_format='channels_last',
                             implementation=implementation)
  layer.build(shape)
  base_strides = tf.Variable([2.0, 2.0])

  y_probe = layer(x)
  dy = tf.random.normal(y_probe.shape, seed=1)

  ours = forward_backward_step(x, dy, layer.strides, lambda: layer(x))
  base = forward_backward_step(
      x, dy, base_strides, lambda: straightforward_diffstride(x, base_strides))
  y0, dx0, ds0 = base()
  y1, dx1, ds1 = ours()
  rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
  err = max(rel(y1, y0), rel(dx1, dx0), rel(ds1, ds0))
  t_base, t_ours = time_pair(lambda: [t.numpy() for t in base()],
                             lambda: [t.numpy() for t in ours()], repeats)
  flops = matmul_path_flops(shape, tuple(y1.shape),
                            num_ramp_columns(layer, y1.shape[2]))
  return t_base, t_ours, err, tuple(y1.shape), flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--shapes', nargs='*', default=None,
                      help='B,H,W,C shapes (default: the three target shapes)')
  parser.add_argument('--implementation', default='auto',
                      choices=('auto', 'matmul', 'fft'),
                      help="DiffStride's implementation (default 'auto')")
  args = parser.parse_args()
  shapes = ([tuple(int(v) for v in s.split(',')) for s in args.shapes]
            if args.shapes else DEFAULT_SHAPES)
  print(f'TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, float32, '
        'channels_last, forward+backward (d/dx and d/dstrides), '
        f'implementation={args.implementation!r}')
  peak = matmul_peak_flops()
  print(f'float32 matmul peak (1024^3 product): {peak / 1e9:.0f} GFLOP/s')
  print(f'{"shape (B,H,W,C)":>20} {"output":>16} {"baseline ms":>12} '
        f'{"DiffStride ms":>14} {"speed-up":>9} {"max rel err":>12} '
        f'{"GFLOP":>6} {"GFLOP/s":>8} {"4x needs":>9}')
  for shape in shapes:
    t_base, t_ours, err, out, flops = bench_shape(shape, args.repeats,
                                                  args.implementation)
    line = (f'{str(shape):>20} {str(out):>16} {1e3 * t_base:12.1f} '
            f'{1e3 * t_ours:14.1f} {t_base / t_ours:8.2f}x {err:12.1e}')
    if args.implementation != 'fft':
      needed = flops / (t_base / 4.0)
      line += (f' {flops / 1e9:6.2f} {flops / t_ours / 1e9:8.0f} '
               f'{needed / 1e9:5.0f} ({needed / peak:.0%} of peak)')
    print(line)


if __name__ == '__main__':
  main()
