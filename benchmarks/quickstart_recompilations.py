"""How often the quick start recompiles under XLA, and what XLA costs there.

Runs the quick start (`python train.py --gin_file=gin/quickstart.gin`: a small
DiffStride ResNet, 4 epochs of synthetic 32x32 images) twice through the
harness's command line, with `train.jit_compile=True` and `False`, and reads
from the logs:

  * the DiffStride size changes and train / test function rebuilds that
    `diffstride.sizes` logs (logger 'diffstride', INFO: one line each);
  * the time of each epoch (Keras' verbose=2 lines), so that the first epoch
    (tracing, compilation and most size changes) and the others can be
    compared between XLA and TensorFlow graphs.

    python benchmarks/quickstart_recompilations.py [--modes xla,graph]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(jit: bool, workdir: str):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  command = [sys.executable, os.path.join(_ROOT, 'train.py'),
             '--gin_file=gin/quickstart.gin', f'--workdir={workdir}',
             f'--gin_bindings=train.jit_compile={jit}',
             '--gin_bindings=train.verbose=2']
  result = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True,
                          text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-4000:])
  with open(os.path.join(workdir, 'metrics.json')) as f:
    metrics = json.load(f)
  return result.stdout + result.stderr, metrics


def summarize(log: str):
  changes = len(re.findall(r'DiffStride output sizes changed', log))
  rebuilds = {kind: len(re.findall(rf'rebuilding the {kind} function', log))
              for kind in ('train', 'test', 'predict')}
  epochs = [int(s) for s in re.findall(r'\d+/\d+ - (\d+)s - ', log)]
  return changes, rebuilds, epochs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--modes', default='xla,graph')
  args = parser.parse_args()
  for mode in args.modes.split(','):
    with tempfile.TemporaryDirectory() as workdir:
      log, metrics = run(mode == 'xla', os.path.join(workdir, 'run'))
    changes, rebuilds, epochs = summarize(log)
    print(f'{mode}: epoch times {epochs} s (total {sum(epochs)} s), '
          f'test top-1 {metrics["test_top1"]:.3f}, strides '
          f'{metrics["learned_strides"]}')
    if mode == 'xla':
      print(f'  size changes seen before training steps: {changes}; '
            f'rebuilt functions: {rebuilds}; metrics.json: '
            f'{metrics["size_changes_this_time"]} size changes, '
            f'{metrics["recompilations_this_time"]} train recompilations')


if __name__ == '__main__':
  main()
