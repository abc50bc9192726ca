r"""Every downsampling method on three data sets, in one rerunnable command.

    python examples/compare_methods.py [--runs_dir runs/compare]
        [--out reports/compare] [--dry_run] [--quick]
        [--lambdas 0.3,1] [--penalty_init 222] [--penalty_forms paper]
        [--penalty_stems learned]

Trains the small ResNet of `gin/builtin/*.gin` with every registered method
(`diffstride.methods`: strided convolutions, fixed spectral pooling,
DiffStride, average pooling, BlurPool, APS, DCT-DiffStride) on

  * builtin:  the built-in 'synthetic_frequency' images (32x32 RGB, classes
              that differ in spatial frequency);
  * digits:   scikit-learn's handwritten digits, bilinear to 32x32 grey;
  * textures: 32x32 grey patches of six photographs scikit-image bundles,
              per-patch normalised, train and test from disjoint rows,

from the good (2, 2, 2) and the poor (3, 2, 3) stride initialisation, with
seeds 0, 1, 2; plus DiffStride with the complexity penalty at `--lambdas`
from `--penalty_init` (default (2, 2, 2)), in each of `--penalty_forms`
(default the paper's) and each of `--penalty_stems`: 'learned' (the stem's
stride is learned too, the default) and 'none' (no layer after the stem
convolution, `Resnet.stem_pooling = False`; with lambda 0 as well).
Everything else is held equal: the recipe of
`gin/base/builtin_recipe.gin` (SGD with momentum, cosine schedule, batch
64, pad-and-crop augmentation; no flips on digits), `--epochs` epochs of at
most `--train_examples` images, `--test_examples` test images, the same
seeds. Each run writes its own workdir, RUNS_DIR/<dataset>/<method>[-lambda<l>]/
<init>/seed<s>; a workdir with metrics.json is skipped, so rerunning the
command finishes what an interrupted sweep left (an interrupted run resumes
from its backup). Then the report (`diffstride.experiments.report`) goes to
OUT: comparison.md (test top-1, shift consistency, conv MMACs per example,
final strides; mean ± std over seeds) and methods_vs_compute.png, with the
report's other tables.

The runs are trained `--jobs` at a time (default 2), each process of
this script taking every jobs-th run of the plan one after the other
(`train.py`'s calls: a fresh gin config and Keras session each), not a
`train.py` subprocess per run: importing TensorFlow and the harness costs
each process about 10 s of CPU time (measured), a third of a fixed-stride
run here. One such process keeps about one core busy on these small
models, hence two on two cores. A run that raises is logged as FAILED and
the sweep goes on; a crash of a process is covered by the rerun, which
skips what finished.
"""

import argparse
import dataclasses
import gc
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, 'gin')
sys.path.insert(0, ROOT)  # This checkout's diffstride, not another install.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
DATASETS = ('builtin', 'digits', 'textures')
INITS = ((2, 2, 2), (3, 2, 3))
LAMBDA_INIT = (2, 2, 2)

# CPU seconds of one run of 90 steps (3 epochs of 1,920 textures, 450
# test images, shift consistency included), measured in this script on a
# 2-core AMD EPYC shared with other jobs (see docs/reproducing.md); other
# step counts scale the 60% of it that is training (the rest: building,
# tracing, evaluation); the built-in RGB images cost 1.2x (measured 1.16 to
# 1.25x). Only for the estimate printed at the start: CPU time, and the
# wall time on an idle machine, about CPU_PER_WALL times less (the quick
# start: 126 s of CPU time here, about 84 s of wall time when measured
# alone, docs/performance.md).
CPU_SECONDS_90_STEPS = {'strided_conv': 26, 'spectral_pooling': 32,
                        'diffstride': 85, 'dct_diffstride': 58,
                        'avg_pooling': 31, 'blurpool': 37, 'aps': 31}
DATASET_COST = {'builtin': 1.2, 'digits': 1.0, 'textures': 1.0}
TRAINING_SHARE = 0.6
CPU_PER_WALL = 1.5
TRAIN_SIZES = {'builtin': 5000, 'digits': 1347, 'textures': 3000}
BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the comparison."""
  dataset: str
  method: str
  init: tuple
  seed: int
  weight: float = 0.0  # The complexity penalty's lambda.
  form: str = 'paper'  # The penalty's form (`diffstride.complexity`).
  stem_pooling: bool = True  # False: `Resnet.stem_pooling = False`.

  def _suffix(self, sep: str) -> str:
    """'-lambda0.3-compute-nostem' (sep '-') or ' lambda 0.3 compute
    nostem' (sep ' '): what sets the run apart beyond its method."""
    parts = []
    if self.weight:
      parts.append(f'lambda{"" if sep == "-" else " "}{self.weight:g}')
      if self.form != 'paper':
        parts.append(self.form)
    if not self.stem_pooling:
      parts.append('nostem')
    return ''.join(sep + p for p in parts)

  def workdir(self, runs_dir: str) -> str:
    return os.path.join(runs_dir, self.dataset, self.method + self._suffix('-'),
                        ''.join(str(s) for s in self.init), f'seed{self.seed}')

  def describe(self) -> str:
    return (f'{self.dataset} {self.method}{self._suffix(" ")} init '
            f'{self.init} seed {self.seed}')

  def gin_file(self) -> str:
    return os.path.join(GIN_DIR, self.dataset, f'{self.method}.gin')

  def bindings(self, args) -> List[str]:
    out = [f'EPOCHS = {args.epochs}', f'STRIDE_INIT = {self.init}',
           f'train.seed = {self.seed}', 'train.verbose = 0',
           f'image_datasets.max_train_examples = {args.train_examples}',
           f'image_datasets.max_test_examples = {args.test_examples}']
    if args.max_steps_per_epoch:
      out.append(f'train.max_steps_per_epoch = {args.max_steps_per_epoch}')
    if self.weight:
      out += [f'train.complexity_weight = {self.weight}',
              f"train.complexity_form = '{self.form}'"]
    if not self.stem_pooling:
      out.append('Resnet.stem_pooling = False')
    return out

  def steps(self, args) -> int:
    per_epoch = min(TRAIN_SIZES[self.dataset], args.train_examples) // \
        BATCH_SIZE
    if args.max_steps_per_epoch:
      per_epoch = min(per_epoch, args.max_steps_per_epoch)
    return args.epochs * max(per_epoch, 1)

  def estimate(self, args) -> float:
    """Estimated CPU seconds (CPU_SECONDS_90_STEPS, TRAINING_SHARE)."""
    base = (CPU_SECONDS_90_STEPS.get(self.method, 85)
            * DATASET_COST[self.dataset])
    return base * (1 - TRAINING_SHARE + TRAINING_SHARE * self.steps(args) / 90)


def plan(args) -> List[Run]:
  """Every run: data sets, methods, inits, seeds (innermost) in the order
  given, then the DiffStride runs with the penalty."""
  runs = [Run(d, m, init, s) for d in args.datasets for m in args.methods
          for init in args.inits for s in args.seeds]
  if 'diffstride' in args.methods:
    # Lambda 0 with each stem choice (one form: none applies), then every
    # lambda > 0 with every form and stem choice; the ones above once.
    runs += [Run(d, 'diffstride', args.penalty_init, s, w, f, stem)
             for d in args.datasets for w in args.lambdas
             for f in (('paper',) if w == 0 else args.penalty_forms)
             for stem in args.penalty_stems for s in args.seeds]
  return list(dict.fromkeys(runs))


def train_one(run: Run, workdir: str, args) -> dict:
  """Trains `run` into `workdir` as `train.py` would; its metrics."""
  import gin  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import keras  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from diffstride.experiments import training  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  gin.clear_config()
  keras.backend.clear_session()
  gin.add_config_file_search_path(GIN_DIR)
  gin.parse_config_files_and_bindings([run.gin_file()],
                                      run.bindings(args) + [
                                          f"train.workdir = '{workdir}'"])
  try:
    return training.train()
  finally:
    gin.clear_config()
    keras.backend.clear_session()
    gc.collect()


def _cpu_seconds() -> float:
  """User + system CPU time of this process so far, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _minutes(seconds: float) -> str:
  return f'{int(seconds // 60)}:{int(seconds % 60):02d}'


def sweep(runs: Sequence[Run], args) -> List[str]:
  """Trains what has not finished, one log line per run; the workdirs of
  the finished runs."""
  start, done, failed = time.time(), [], []
  left = sum(r.estimate(args) for r in runs)
  for i, run in enumerate(runs, 1):
    workdir = run.workdir(args.runs_dir)
    left -= run.estimate(args)
    prefix = f'[{i}/{len(runs)}] {run.describe()}:'
    if os.path.exists(os.path.join(workdir, 'metrics.json')):
      print(f'{prefix} skipped (finished)', flush=True)
      done.append(workdir)
      continue
    began, cpu_began = time.time(), _cpu_seconds()
    try:
      metrics = train_one(run, workdir, args)
    except Exception as e:  # pylint: disable=broad-except
      failed.append(run)
      print(f'{prefix} FAILED after {time.time() - began:.0f} s: '
            f'{type(e).__name__}: {e}', flush=True)
      continue
    seconds, cpu = time.time() - began, _cpu_seconds() - cpu_began
    done.append(workdir)
    with open(os.path.join(args.runs_dir, 'times.jsonl'), 'a') as f:
      f.write(json.dumps(dict(workdir=os.path.relpath(workdir, args.runs_dir),
                              seconds=seconds, cpu_seconds=cpu,
                              steps=metrics['steps'])) + '\n')
    print(f'{prefix} top-1 {metrics["test_top1"]:.3f}, {seconds:.0f} s '
          f'({cpu:.0f} s of CPU time; elapsed {_minutes(time.time() - start)}'
          f', about {_minutes(max(left, 0) / CPU_PER_WALL)} left if idle)',
          flush=True)
  if failed:
    print(f'{len(failed)} run(s) failed: '
          + '; '.join(r.describe() for r in failed), flush=True)
  return done


def _sweep_in_processes(todo: Sequence[Run], jobs: int,
                        argv: Optional[Sequence[str]]):
  """Trains `todo` in `jobs` processes of this script at once (run i in
  process i % jobs: every run its own workdir), their lines as they come."""
  argv = list(sys.argv[1:] if argv is None else argv)
  jobs = min(jobs, len(todo))
  workers = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), *argv, '--jobs', '1',
       '--shard', f'{k}/{jobs}'], stdout=subprocess.PIPE, text=True)
             for k in range(jobs)]
  lines = queue.Queue()
  for k, worker in enumerate(workers):
    threading.Thread(target=lambda k=k, w=worker: [
        lines.put(f'(process {k + 1}/{jobs}) {line}') for line in w.stdout
    ] and None, daemon=True).start()
  while any(w.poll() is None for w in workers) or not lines.empty():
    try:
      print(lines.get(timeout=0.5), end='', flush=True)
    except queue.Empty:
      pass
  for worker in workers:
    worker.wait()


def parse_args(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs_dir', default='runs/compare')
  parser.add_argument('--out', default='reports/compare',
                      help='where the report goes')
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--train_examples', type=int, default=1536,
                      help='train images per data set, at most (digits has '
                      '1,347)')
  parser.add_argument('--test_examples', type=int, default=400)
  parser.add_argument('--max_steps_per_epoch', type=int, default=None)
  parser.add_argument('--datasets', default=','.join(DATASETS))
  parser.add_argument('--methods', default=None,
                      help="default: every registered method "
                      '(diffstride.methods)')
  parser.add_argument('--inits',
                      default=','.join(''.join(map(str, i)) for i in INITS),
                      help='stride initialisations, e.g. 222,323')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--lambdas', default='0.3,1',
                      help="DiffStride's complexity weights, from (2, 2, 2) "
                      "('' for none)")
  parser.add_argument('--penalty_init', default=''.join(map(str, LAMBDA_INIT)),
                      help='the stride initialisation of the runs with the '
                      'penalty')
  parser.add_argument('--penalty_forms', default='paper',
                      help="the penalty's forms: paper, compute, memory "
                      '(diffstride.complexity)')
  parser.add_argument('--penalty_stems', default='learned',
                      help="'learned' (the stem's stride is learned too), "
                      "'none' (no stem layer: Resnet.stem_pooling = False), or "
                      'both')
  parser.add_argument('--jobs', type=int, default=2,
                      help='runs trained at once, each in its own process '
                      '(one TensorFlow process keeps about one core busy on '
                      'these small models); 1: all in this process')
  parser.add_argument('--shard', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--dry_run', action='store_true',
                      help='print the plan and the estimate, train nothing')
  parser.add_argument('--quick', action='store_true',
                      help='a smoke version: strided_conv and '
                      'spectral_pooling on digits, (2, 2, 2), seed 0, one '
                      'epoch of 3 steps')
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f'--jobs must be at least 1, got {args.jobs}')
  if args.quick:
    args.datasets, args.methods, args.inits = 'digits', \
        'strided_conv,spectral_pooling', '222'
    args.seeds, args.lambdas, args.epochs = '0', '', 1
    args.train_examples, args.test_examples = 192, 64
    args.max_steps_per_epoch = 3
  split = lambda text: [t.strip() for t in text.split(',') if t.strip()]
  from diffstride import methods  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  registered = methods.keys()
  args.methods = args.methods or ','.join(registered)
  args.datasets, args.methods = split(args.datasets), split(args.methods)
  args.inits = [tuple(int(c) for c in i) for i in split(args.inits)]
  args.seeds = [int(s) for s in split(args.seeds)]
  args.lambdas = [float(w) for w in split(args.lambdas)]
  args.penalty_init = tuple(int(c) for c in args.penalty_init)
  args.penalty_forms = split(args.penalty_forms)
  stems = {'learned': True, 'none': False}
  if set(split(args.penalty_stems)) - set(stems) or not args.penalty_forms or (
      set(args.penalty_forms) - {'paper', 'compute', 'memory'}):
    parser.error('--penalty_stems takes learned and/or none, --penalty_forms '
                 'paper, compute and/or memory')
  args.penalty_stems = [stems[s] for s in split(args.penalty_stems)]
  unknown = set(args.datasets) - set(DATASETS) | set(args.methods) - set(
      registered)
  if unknown:
    parser.error(f'unknown data sets or methods: {sorted(unknown)}')
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  runs = plan(args)
  todo = [r for r in runs if not os.path.exists(
      os.path.join(r.workdir(args.runs_dir), 'metrics.json'))]
  cpu = sum(r.estimate(args) for r in todo)
  cores = 2.0 if args.jobs > 1 else CPU_PER_WALL
  if not args.shard:
    print(f'{len(runs)} runs ({len(runs) - len(todo)} finished): '
          f'{len(args.datasets)} data sets x {len(args.methods)} methods x '
          f'{len(args.inits)} inits x {len(args.seeds)} seeds + '
          f'{len(runs) - len(args.datasets) * len(args.methods) * len(args.inits) * len(args.seeds)}'
          f' DiffStride runs with the penalty (or without the stem layer); '
          f'{args.epochs} epochs of at most '
          f'{args.train_examples} images, {args.test_examples} test images; '
          f'estimated {cpu / 60:.0f} min of CPU time for what is left, about '
          f'{cpu / cores / 60:.0f} min on an idle 2-core machine with '
          f'--jobs {args.jobs}.',
          flush=True)
  if args.dry_run:
    for run in runs:
      print(f'  {run.workdir(args.runs_dir)}  ({run.steps(args)} steps, '
            f'~{run.estimate(args):.0f} s)')
    return 0
  os.makedirs(args.runs_dir, exist_ok=True)
  if args.shard:  # A worker of `--jobs`: its share, no report.
    index, count = (int(x) for x in args.shard.split('/'))
    sweep(runs[index::count], args)  # The finished ones are skipped.
    return 0
  if args.jobs > 1 and len(todo) > 1:
    _sweep_in_processes(todo, args.jobs, argv)
    done = [r.workdir(args.runs_dir) for r in runs if os.path.exists(
        os.path.join(r.workdir(args.runs_dir), 'metrics.json'))]
  else:
    done = sweep(runs, args)
  if not done:
    return 1
  from diffstride.experiments import report  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  written = report.write_report(done, args.out)
  print(f'report: {written["report"]}' + (
      f'; comparison: {written["comparison"]}' if 'comparison' in written
      else ''), flush=True)
  return 0 if len(done) == len(runs) else 1


if __name__ == '__main__':
  sys.exit(main())
