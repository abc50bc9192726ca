"""Per-step time and peak memory of ResNet-18 with the three downsamplings.

The paper discusses what DiffStride costs at training time; this measures it
for the three networks of the CIFAR tables: ResNet-18 (CIFAR stem, strides
(1, 1, 2, 2, 2), channels_last, float32, batch 32 of 32x32x3) with

  * strided_conv     - strided convolutions (the baseline, the reference),
  * spectral_pooling - FixedSpectralPooling at strides 2 (convolutions
                       unstrided, so the ones before each pooling run at the
                       input resolution),
  * diffstride       - DiffStride (learned strides, larger maps: H / S + 2R).

Time: one `train_on_batch` (forward, backward, SGD update) per step, the three
networks built in one process and timed alternately, median over `--steps`.

Peak memory: TensorFlow reports no allocator statistics on CPU
(`tf.config.experimental.get_memory_info('CPU:0')` returns zeros), and
tracemalloc does not see TensorFlow's allocations, so each network runs in
its own child process and the peak resident set size (VmHWM from
/proc/self/status) is read over the timed steps, after resetting it once the
model is built and traced (/proc/self/clear_refs). We report that peak and
its increase over the resident size just before the steps (the step's own
working memory). Where the peak cannot be reset, the whole-process peak
(ru_maxrss) is reported instead and the output says so.

    python benchmarks/cost_benchmark.py [--steps 5] [--batch 32] [--json out.json]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

VARIANTS = ('strided_conv', 'spectral_pooling', 'diffstride')


def _build(variant: str, batch: int):
  """The ResNet-18 of `resnet_step_benchmark.build` for one variant."""
  # pylint: disable=g-import-not-at-top
  import resnet_step_benchmark  # This script's folder is on sys.path.
  from diffstride import pooling
  pooling_cls = {'strided_conv': None,
                 'spectral_pooling': pooling.FixedSpectralPooling,
                 'diffstride': pooling.DiffStride}[variant]
  return resnet_step_benchmark.build(pooling_cls, batch)


def _data(batch: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  return (rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
          rng.integers(0, 10, size=(batch,)))


def _status_kb(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise KeyError(field)


def _reset_peak() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def measure_memory(variant: str, batch: int, steps: int) -> dict:
  """In this process: peak RSS over `steps` training steps (after warm-up)."""
  x, y = _data(batch)
  model = _build(variant, batch)
  model.train_on_batch(x, y)
  model.train_on_batch(x, y)
  before = _status_kb('VmRSS')
  reset = _reset_peak()
  for _ in range(steps):
    model.train_on_batch(x, y)
  if reset:
    peak = _status_kb('VmHWM')
    method = 'VmHWM over the timed steps (reset after warm-up)'
  else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = 'ru_maxrss of the whole process (peak could not be reset)'
  return {'peak_rss_mb': peak / 1024, 'rss_before_steps_mb': before / 1024,
          'step_increase_mb': (peak - before) / 1024, 'memory_method': method}


def _memory_in_child(variant: str, batch: int, steps: int) -> dict:
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--memory_of', variant,
       '--batch', str(batch), '--steps', str(steps)],
      capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f'memory measurement of {variant} failed:\n'
                       f'{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def measure_time(batch: int, steps: int) -> dict:
  """Median seconds per training step of each variant, timed alternately."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  x, y = _data(batch)
  models = {v: _build(v, batch) for v in VARIANTS}
  for model in models.values():  # Trace and warm up.
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
  times = {v: [] for v in VARIANTS}
  for _ in range(steps):
    for variant, model in models.items():
      start = time.perf_counter()
      model.train_on_batch(x, y)
      times[variant].append(time.perf_counter() - start)
  return {v: float(np.median(t)) for v, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--json', default=None,
                      help='also write the results to this JSON file')
  parser.add_argument('--memory_of', default=None, choices=VARIANTS,
                      help=argparse.SUPPRESS)  # Child process mode.
  args = parser.parse_args()
  if args.memory_of:
    print(json.dumps(measure_memory(args.memory_of, args.batch, args.steps)))
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  start = time.time()
  seconds = measure_time(args.batch, args.steps)
  memory = {v: _memory_in_child(v, args.batch, max(args.steps, 2))
            for v in VARIANTS}
  base_t = seconds['strided_conv']
  base_m = memory['strided_conv']['peak_rss_mb']
  rows = []
  for v in VARIANTS:
    rows.append({'variant': v, 'ms_per_step': 1e3 * seconds[v],
                 'time_ratio': seconds[v] / base_t, **memory[v],
                 'memory_ratio': memory[v]['peak_rss_mb'] / base_m})
  load = os.getloadavg()
  result = {
      'what': (f'ResNet-18 CIFAR training step, batch {args.batch}, 32x32x3, '
               'channels_last, float32'),
      'tensorflow': tf.__version__, 'cpus': os.cpu_count(),
      'steps': args.steps, 'load_average_1min_at_end': load[0],
      'wall_seconds': time.time() - start, 'rows': rows}
  print(f"{result['what']}; TensorFlow {tf.__version__}, {os.cpu_count()} "
        f'CPUs, median of {args.steps} steps (timed alternately); peak memory '
        f"= {rows[0]['memory_method']}, one child process per network; load "
        f'average {load[0]:.1f}')
  print(f"{'network':>17} {'ms/step':>9} {'x strided':>9} {'peak MB':>8} "
        f"{'x strided':>9} {'step +MB':>8}")
  for r in rows:
    print(f"{r['variant']:>17} {r['ms_per_step']:9.1f} {r['time_ratio']:8.2f}x "
          f"{r['peak_rss_mb']:8.0f} {r['memory_ratio']:8.2f}x "
          f"{r['step_increase_mb']:8.0f}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
