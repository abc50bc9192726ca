"""Experiment: would a fused, compiled kernel make DiffStride faster on CPU?

The package computes DiffStride's spectral crop with TensorFlow matmuls
(`diffstride.spectral.spectral_crop`). Between them, the (B, H, 2w', C)
intermediate goes to memory and back, and the backward pass reads it again.
`benchmarks/fused_kernel/spectral_crop_nhwc.cc` does each batch element start
to finish while its intermediate is in cache (channels_last, float32), with a
register-blocked micro-kernel vectorised over channels, and recomputes the
intermediate in the backward pass instead of storing it.

This script compiles that file with g++ against the installed TensorFlow
(into a temporary folder; nothing is installed), runs DiffStride once with
the package's path and once with the kernel in its place (same masks, same
`MaskGradients`), checks that outputs, input gradients and stride gradients
agree, and times both, alternately, together with the straightforward FFT
pipeline of layer_benchmark.py:

    python benchmarks/fused_kernel_benchmark.py [--repeats 20]

Needs g++ (or $CXX). The result decides whether the package ships a compiled
kernel; see the README's Performance section.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from diffstride import pooling
from diffstride import spectral
import layer_benchmark  # This script's folder is on sys.path.

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'fused_kernel', 'spectral_crop_nhwc.cc')


def compile_kernel(out_dir: str):
  """Builds the op library with the installed TensorFlow's flags; loads it."""
  library = os.path.join(out_dir, 'spectral_crop_nhwc.so')
  command = ([os.environ.get('CXX', 'g++'), '-O3', '-march=native',
              '-ffp-contract=fast', '-shared', '-fPIC', '-w', _SOURCE, '-o',
              library] + tf.sysconfig.get_compile_flags() +
             tf.sysconfig.get_link_flags())
  subprocess.run(command, check=True)
  return tf.load_op_library(library)


def fused_spectral_crop(ops, x, kept_rows, row_mask, row_has_grad, col_mask,
                        col_has_grad, out_width):
  """`spectral.spectral_crop` for channels_last, with the compiled kernels."""
  height, width = tf.shape(x)[1], tf.shape(x)[2]
  num_cols = tf.shape(col_mask)[0]
  row_bases = spectral._row_bases(kept_rows, height)  # pylint: disable=protected-access
  col_bases = spectral._column_bases(num_cols, width, out_width)  # pylint: disable=protected-access
  col_weights = spectral.irfft_weights(num_cols, out_width)

  @tf.custom_gradient
  def crop(x, row_mask, col_mask):
    a_re, a_im = spectral._masked_product(row_bases, row_mask)  # pylint: disable=protected-access
    b_re, b_im = spectral._masked_product(col_bases, col_mask * col_weights)  # pylint: disable=protected-access
    rows, cols = spectral.separable_matrices(a_re, a_im, b_re, b_im)
    y = ops.diff_stride_crop_nhwc(x, rows, cols)

    def grad(dy):
      masks = spectral.MaskGradients(row_bases, col_bases, col_weights, rows,
                                     a_re, a_im, row_has_grad, col_has_grad)
      dx, g, col_prod = ops.diff_stride_crop_nhwc_grad(
          x, dy, rows, cols, masks.f_cols, masks.u_rows, masks.g_cols)
      return (dx, masks.row_mask_grad(tf.reduce_sum(g, axis=0)),
              masks.col_mask_grad(tf.reduce_sum(col_prod, axis=0)))

    return y, grad

  return crop(x, row_mask, col_mask)


@contextlib.contextmanager
def fused_kernel_in_place(ops):
  """Routes channels_last DiffStride layers built inside to the kernel."""
  original = spectral.spectral_crop

  def routed(x, kept_rows, row_mask, row_has_grad, col_mask, col_has_grad,
             out_width, channels_first):
    if channels_first:
      return original(x, kept_rows, row_mask, row_has_grad, col_mask,
                      col_has_grad, out_width, channels_first)
    return fused_spectral_crop(ops, x, kept_rows, row_mask, row_has_grad,
                               col_mask, col_has_grad, out_width)

  spectral.spectral_crop = routed
  try:
    yield
  finally:
    spectral.spectral_crop = original


def bench_shape(ops, shape, repeats):
  x = tf.random.normal(shape, seed=0)
  package = pooling.DiffStride(strides=(2.0, 2.0), data_format='channels_last',
                               implementation='matmul')
  fused = pooling.DiffStride(strides=(2.0, 2.0), data_format='channels_last',
                             implementation='matmul')
  fused.build(shape)
  base_strides = tf.Variable([2.0, 2.0])
  dy = tf.random.normal(package(x).shape, seed=1)
  step = layer_benchmark.forward_backward_step
  ours = step(x, dy, package.strides, lambda: package(x))
  kernel = step(x, dy, fused.strides, lambda: fused(x))
  base = step(x, dy, base_strides,
              lambda: layer_benchmark.straightforward_diffstride(
                  x, base_strides))
  with fused_kernel_in_place(ops):
    results_kernel = kernel()  # Traces with the kernel in place.
  results_ours = ours()
  err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
            for a, b in zip(results_kernel, results_ours))
  run = lambda fn: (lambda: [t.numpy() for t in fn()])
  t_base, t_ours = layer_benchmark.time_pair(run(base), run(ours), repeats)
  t_base2, t_kernel = layer_benchmark.time_pair(run(base), run(kernel),
                                                repeats)
  return 0.5 * (t_base + t_base2), t_ours, t_kernel, err


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    ops = compile_kernel(tmp)
  print(f'TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, float32, '
        'channels_last, forward+backward (d/dx and d/dstrides)')
  print(f'{"shape (B,H,W,C)":>20} {"FFT pipeline ms":>16} {"package ms":>11} '
        f'{"fused kernel ms":>16} {"package x":>10} {"kernel x":>9} '
        f'{"kernel vs package":>18} {"max rel diff":>13}')
  for shape in layer_benchmark.DEFAULT_SHAPES:
    t_base, t_ours, t_kernel, err = bench_shape(ops, shape, args.repeats)
    print(f'{str(shape):>20} {1e3 * t_base:16.1f} {1e3 * t_ours:11.1f} '
          f'{1e3 * t_kernel:16.1f} {t_base / t_ours:9.2f}x '
          f'{t_base / t_kernel:8.2f}x {t_ours / t_kernel:17.2f}x '
          f'{err:13.1e}')


if __name__ == '__main__':
  main()
