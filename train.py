r"""Runs an experiment from gin files: a thin CLI over `diffstride.experiments.training`.

    python train.py --gin_file=gin/quickstart.gin
    python train.py --gin_file=gin/cifar10/diffstride.gin \
        --gin_bindings='STRIDE_INIT = (3, 2, 3)' --workdir=runs/c10_323 --seed=1

Gin files are looked up as given, then under `gin/` (so `include` lines and
`--gin_file=cifar10/diffstride.gin` both work). `--gin_config` is an alias of
`--gin_file`. The workdir is, in order: `--workdir`, a `train.workdir`
binding, or `runs/<name of the last gin file>-seed<seed>`. Rerunning the same
command resumes an interrupted run from its last backup.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import gin

_ROOT = os.path.dirname(os.path.abspath(__file__))
_GIN_DIR = os.path.join(_ROOT, 'gin')

flags.DEFINE_multi_string('gin_file', [],
                          'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_config', [], 'Alias of --gin_file.')
flags.DEFINE_multi_string('gin_bindings', [],
                          "Gin bindings, e.g. 'train.epochs = 10'.")
flags.DEFINE_string('workdir', None, 'Where to write logs and checkpoints.')
flags.DEFINE_integer('seed', None, 'Random seed (binds train.seed).')
flags.DEFINE_boolean('dry_run', False,
                     'Parse the config, build the model, print its summary '
                     'and exit, without loading data.')


def _resolve(path: str) -> str:
  for candidate in (path, os.path.join(_GIN_DIR, path)):
    if os.path.exists(candidate):
      return candidate
  raise app.UsageError(f'Gin file {path!r} not found (looked in the current '
                       f'directory and in {_GIN_DIR}).')


def _bound(name: str, default=None):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  files = [_resolve(f) for f in flags.FLAGS.gin_file + flags.FLAGS.gin_config]
  if not files:
    raise app.UsageError('Give at least one --gin_file (e.g. '
                         'gin/quickstart.gin).')
  # Importing the harness registers the package's configurables with gin.
  from diffstride.experiments import training  # pylint: disable=g-import-not-at-top
  gin.add_config_file_search_path(_GIN_DIR)
  bindings = list(flags.FLAGS.gin_bindings)
  if flags.FLAGS.seed is not None:
    bindings.append(f'train.seed = {flags.FLAGS.seed}')
  try:
    gin.parse_config_files_and_bindings(files, bindings)
  except (ValueError, KeyError, TypeError, ImportError) as e:
    sys.stderr.write(f'train.py: the gin configuration is invalid:\n{e}\n')
    return 2
  seed = _bound('train.seed', 0)
  workdir = flags.FLAGS.workdir or _bound('train.workdir')
  if not workdir:
    stem = os.path.splitext(os.path.basename(files[-1]))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(files[-1])))
    name = stem if parent == 'gin' else f'{parent}_{stem}'
    workdir = os.path.join('runs', f'{name}-seed{seed}')
  logging.info('Workdir: %s', workdir)
  print(f'workdir: {workdir}', flush=True)
  with gin.unlock_config():
    gin.bind_parameter('train.workdir', workdir)
  training.train(dry_run=flags.FLAGS.dry_run)
  return 0


if __name__ == '__main__':
  app.run(main)
