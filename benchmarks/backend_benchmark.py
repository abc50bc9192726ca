"""ResNet-18 CIFAR training step on TensorFlow (graph, XLA) and JAX (jit).

For each backend and compilation mode, three networks of identical
architecture (ResNet-18, CIFAR stem, strides (1, 1, 2, 2, 2), channels_last,
float32, batch 32 of 32x32x3, SGD with momentum) differ only in how they
downsample:

  * DiffStride - the real layer (`diffstride.crop`: static output sizes
                 under XLA / jit, sizes found when the graph runs on
                 TensorFlow graph);
  * stand-in   - a free crop to DiffStride's output size at its initial
                 strides (the convolutions see maps of the same size, the
                 downsampling costs nothing): DiffStride / stand-in is the
                 layer's own cost (target <= 1.25x);
  * strided    - strided convolutions (no pooling layer), for XLA vs graph.

Under XLA / jit the DiffStride network is timed with both gradients of its
static matmul path: hand-written ('DiffStride-custom') and automatic
differentiation ('DiffStride-autodiff'); 'DiffStride' is the layer's default
for the backend (`backend.CUSTOM_GRADIENT = None`).

Each backend runs in its own process (Keras picks its backend at import);
within a process all networks are timed alternately, step after step, so that
load from anything else on the machine hits them alike. The learning rate is
0 so that the strides, hence the output sizes, stay put while timing (an SGD
step of lr 0 costs what any other does).

    python benchmarks/backend_benchmark.py [--steps 10] [--batch 32]
        [--backends tensorflow,jax]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from benchmarks import machine  # pylint: disable=g-import-not-at-top,wrong-import-position


def worker(backend: str, steps: int, batch: int):
  """Times the networks on `backend` (this process's KERAS_BACKEND)."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from diffstride import backend  # pylint: disable=g-import-not-at-top
  from diffstride import pooling  # pylint: disable=g-import-not-at-top
  from diffstride import resnet  # pylint: disable=g-import-not-at-top
  from diffstride import sizes  # pylint: disable=g-import-not-at-top
  assert keras.backend.backend() == backend

  # The free crop to DiffStride's output size, as in resnet_step_benchmark.
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from resnet_step_benchmark import CropStandIn as StandIn  # pylint: disable=g-import-not-at-top

  def build(pooling_cls, jit):
    keras.utils.set_random_seed(0)
    model = resnet.resnet18(num_output_classes=10, channels_first=False,
                            pooling_cls=pooling_cls)
    model.compile(optimizer=keras.optimizers.SGD(0.0, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), jit_compile=jit)
    model.build((batch, 32, 32, 3))
    return model

  modes = {'tensorflow': (('graph', False), ('xla', True)),
           'jax': (('jit', True),)}[backend]
  nets = {'DiffStride': pooling.DiffStride, 'stand-in': StandIn,
          'strided': None}
  models = {}
  for mode, jit in modes:
    for name, cls in nets.items():
      models[(mode, name)] = (build(cls, jit), None)
    if jit:
      models[(mode, 'DiffStride-custom')] = (build(pooling.DiffStride, jit),
                                             True)
      models[(mode, 'DiffStride-autodiff')] = (build(pooling.DiffStride, jit),
                                               False)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, size=(batch,))

  def step(model, custom):
    backend.CUSTOM_GRADIENT = custom
    try:
      model.train_on_batch(x, y)
    finally:
      backend.CUSTOM_GRADIENT = None

  compile_seconds = {}
  for key, (model, custom) in models.items():
    start = time.perf_counter()
    step(model, custom)  # Trace and compile.
    compile_seconds[key] = time.perf_counter() - start
    step(model, custom)
  times = {key: [] for key in models}
  for _ in range(steps):
    for key, (model, custom) in models.items():
      start = time.perf_counter()
      step(model, custom)
      times[key].append(time.perf_counter() - start)
  recompilations = {
      f'{mode}/{name}': sizes.size_tracker(model).recompilations['train']
      for (mode, name), (model, _) in models.items()
      if sizes.size_tracker(model) is not None}
  return dict(
      backend=backend,
      version=(keras.__version__, _backend_version(backend)),
      median_ms={f'{m}/{n}': 1e3 * float(np.median(t))
                 for (m, n), t in times.items()},
      compile_s={f'{m}/{n}': s for (m, n), s in compile_seconds.items()},
      recompilations=recompilations)


def _backend_version(backend):
  if backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.__version__
  import jax  # pylint: disable=g-import-not-at-top
  return jax.__version__


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--backends', default='tensorflow,jax')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.steps, args.batch)))
    return
  print(f'ResNet-18 CIFAR training step, batch {args.batch}, channels_last, '
        f'float32, median of {args.steps} steps; CPU: {machine.cpu_name()}')
  for backend in args.backends.split(','):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--worker', backend,
         '--steps', str(args.steps), '--batch', str(args.batch)],
        capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
      print(f'{backend}: failed\n{result.stderr[-3000:]}')
      continue
    run = json.loads(result.stdout.strip().splitlines()[-1])
    med = run['median_ms']
    print(f'\n{backend} (Keras {run["version"][0]}, {run["version"][1]})')
    for key, ms in med.items():
      print(f'  {key:>26}: {ms:8.1f} ms/step   (first call '
            f'{run["compile_s"][key]:5.1f} s)')
    for mode in sorted({k.split('/')[0] for k in med}):
      ratio = med[f'{mode}/DiffStride'] / med[f'{mode}/stand-in']
      print(f'  {mode}: DiffStride / stand-in = {ratio:.2f}x '
            '(target <= 1.25x)')
      auto = med.get(f'{mode}/DiffStride-autodiff')
      if auto:
        custom = med[f'{mode}/DiffStride-custom']
        print(f'  {mode}: autodiff / hand-written gradient = '
              f'{auto / custom:.2f}x; stand-in ratio with the hand-written '
              f'{custom / med[f"{mode}/stand-in"]:.2f}x, with autodiff '
              f'{auto / med[f"{mode}/stand-in"]:.2f}x')
    if backend == 'tensorflow':
      for net in ('DiffStride', 'strided'):
        print(f'  XLA / graph, {net}: '
              f'{med["xla/" + net] / med["graph/" + net]:.2f}x')
    print(f'  recompilations while timing (lr 0): {run["recompilations"]}')


if __name__ == '__main__':
  main()
