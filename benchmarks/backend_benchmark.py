"""ResNet-18 CIFAR training step on TensorFlow (graph, XLA), JAX (jit) and
PyTorch (eager), and the quick start's training per backend.

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

With `--quickstart`, also the quick start (`train.py
--gin_file=gin/quickstart.gin`, the whole command, one run each, in turn) on
TensorFlow graph, TensorFlow XLA (`train.jit_compile = True`) and JAX: wall
time, training time, accuracy. (`train.py` refuses the torch backend at
start-up.) The JAX and PyTorch workers need only Keras, NumPy and the
package's core (Keras seeds TensorFlow too when it is installed).

    python benchmarks/backend_benchmark.py [--steps 10] [--batch 32]
        [--backends tensorflow,jax,torch] [--quickstart]
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

  from diffstride import backend as diffstride_backend  # pylint: disable=g-import-not-at-top
  from diffstride import pooling  # pylint: disable=g-import-not-at-top
  from diffstride import resnet  # pylint: disable=g-import-not-at-top
  from diffstride import sizes  # pylint: disable=g-import-not-at-top
  assert keras.backend.backend() == backend

  # The free crop to DiffStride's output size, as in resnet_step_benchmark.
  from benchmarks.stand_in import CropStandIn as StandIn  # pylint: disable=g-import-not-at-top

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
           'jax': (('jit', True),), 'torch': (('eager', False),)}[backend]
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
    diffstride_backend.CUSTOM_GRADIENT = custom
    try:
      model.train_on_batch(x, y)
    finally:
      diffstride_backend.CUSTOM_GRADIENT = None

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
  if backend == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    return torch.__version__
  import jax  # pylint: disable=g-import-not-at-top
  return jax.__version__


# The quick start's variants: (label, backend, extra gin bindings).
QUICKSTART_RUNS = (('TensorFlow graph', 'tensorflow', ()),
                   ('TensorFlow XLA', 'tensorflow', ('train.jit_compile = True',)),
                   ('JAX jit', 'jax', ()))


def quickstart(label, backend, bindings, workdir):
  """Runs the quick start once; returns its whole-command wall time and
  metrics.json."""
  command = [sys.executable, os.path.join(_ROOT, 'train.py'),
             '--gin_file=gin/quickstart.gin', f'--workdir={workdir}'] + [
                 f'--gin_bindings={b}' for b in bindings]
  env = dict(os.environ, KERAS_BACKEND=backend)
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=_ROOT, check=False)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    print(f'{label}: failed\n{result.stderr[-3000:]}')
    return None
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return seconds, json.load(f)


def quickstarts():
  import tempfile  # pylint: disable=g-import-not-at-top
  print('\nQuick start (python train.py --gin_file=gin/quickstart.gin, 156 '
        'steps), one run each')
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for i, (label, backend, bindings) in enumerate(QUICKSTART_RUNS):
      run = quickstart(label, backend, bindings, os.path.join(root, str(i)))
      if run is None:
        continue
      seconds, metrics = run
      results[label] = seconds
      print(f'  {label:>16}: {seconds:6.1f} s whole command, '
            f'{metrics["wall_time_seconds"]:6.1f} s in train(), top-1 '
            f'{100 * metrics["test_top1"]:.1f}%, size changes '
            f'{metrics.get("size_changes_this_time", "-")}, recompilations '
            f'{metrics.get("recompilations_this_time", "-")}')
  base = results.get('TensorFlow graph')
  if base:
    for label, seconds in results.items():
      print(f'  {label} / TensorFlow graph: {seconds / base:.2f}x')
  print('  PyTorch: train.py runs on TensorFlow and JAX only (refused at '
        'start-up on torch).')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--backends', default='tensorflow,jax,torch')
  parser.add_argument('--quickstart', action='store_true',
                      help='also time the quick start on each backend')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.steps, args.batch)))
    return
  print(f'ResNet-18 CIFAR training step, batch {args.batch}, channels_last, '
        f'float32, median of {args.steps} steps; CPU: {machine.cpu_name()}')
  steps_ms = {}
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
    for mode in sorted({k.split('/')[0] for k in med}):
      steps_ms[f'{backend} {mode}'] = med[f'{mode}/DiffStride']
  if 'tensorflow graph' in steps_ms:
    print('\nResNet-18 step with DiffStride, per backend / TensorFlow graph '
          '(same run):')
    for name, ms in steps_ms.items():
      print(f'  {name:>18}: {ms:8.1f} ms/step, '
            f'{ms / steps_ms["tensorflow graph"]:.2f}x')
  if args.quickstart:
    quickstarts()


if __name__ == '__main__':
  main()
