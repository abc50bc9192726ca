r"""Runs an experiment from gin files: a thin CLI over `diffstride.experiments.training`.

    python train.py --gin_file=gin/quickstart.gin
    python train.py --gin_file=gin/cifar10/diffstride.gin \
        --gin_bindings='STRIDE_INIT = (3, 2, 3)' --workdir=runs/c10_323 --seed=1

Gin files are looked up as given, then under `gin/` (so `include` lines and
`--gin_file=cifar10/diffstride.gin` both work). `--gin_config` is an alias of
`--gin_file`. The workdir is, in order: `--workdir`, a `train.workdir`
binding, or `runs/<name of the last gin file>-seed<seed>`. Rerunning the same
command resumes an interrupted run from its last backup.

It prints the workdir, a data line, a model line, one line per epoch (Keras'
progress bar on a terminal) and a summary; metrics.json in the workdir is
the full record. `--verbose` also shows the harness's log, TensorFlow's
start-up notices and INFO lines (TF_CPP_MIN_LOG_LEVEL is 1 otherwise,
unless set; see diffstride/experiments/console.py).
"""

import contextlib
import os
import sys
import tempfile

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
flags.DEFINE_boolean('allow_config_change', False,
                     'Resume a run in its workdir even if its configuration '
                     'changed (e.g. more epochs); otherwise such a rerun is '
                     'refused before anything is written.')
flags.DEFINE_boolean('verbose', False,
                     "Also show the harness's log and TensorFlow's start-up "
                     'and INFO lines.')


def _resolve(path: str) -> str:
  for candidate in (path, os.path.join(_GIN_DIR, path)):
    if os.path.exists(candidate):
      return candidate
  raise app.UsageError(f'Gin file {path!r} not found (looked in the current '
                       f'directory and in {_GIN_DIR}).')


@contextlib.contextmanager
def _startup_stderr(verbose: bool):
  """Holds back what is written to file descriptor 2 inside the block (the
  harness's import: TensorFlow's native start-up notices), then writes the
  lines `console.startup_lines_to_keep` keeps; all of them if the block
  raised or with `verbose`."""
  if verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  failed = True
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode('utf-8', 'replace').splitlines()
      if not failed:
        from diffstride.experiments import console  # pylint: disable=g-import-not-at-top
        lines = console.startup_lines_to_keep(lines)
      if lines:
        sys.stderr.write('\n'.join(lines) + '\n')
        sys.stderr.flush()


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
  verbose = flags.FLAGS.verbose
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
    logging.set_verbosity(logging.WARNING)
  with _startup_stderr(verbose):
    # Importing the harness registers the package's configurables with gin.
    from diffstride.experiments import console  # pylint: disable=g-import-not-at-top
    from diffstride.experiments import rerun_guard  # pylint: disable=g-import-not-at-top
    from diffstride.experiments import training  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # Its device plugins' notices too.
  console.enable()
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
  print(f'workdir: {workdir}', flush=True)
  with gin.unlock_config():
    gin.bind_parameter('train.workdir', workdir)
  try:
    metrics = training.train(
        dry_run=flags.FLAGS.dry_run,
        allow_config_change=flags.FLAGS.allow_config_change)
  except rerun_guard.ConfigChangedError as e:
    sys.stderr.write(f'train.py: {e}\n')
    return 3
  if metrics:
    print(console.summary(metrics, workdir), flush=True)
  return 0


if __name__ == '__main__':
  app.run(main)
