r"""The command lines: `train.py` / `diffstride-train` and `diffstride-report`.

    python train.py --gin_file=gin/quickstart.gin      # from a clone
    diffstride-train --gin_file=quickstart.gin         # anywhere, installed
    diffstride-report RUN_DIR [RUN_DIR ...] --out DIR

`diffstride-train` (`train_main`) takes the same flags as `train.py`, which
is a thin wrapper around it. Gin files are looked up as given, then in
`gin_dir()`: the clone's `gin/` folder, or the copy of it an installed
package ships (`diffstride/experiments/configs`). `diffstride-report`
(`report_main`) is `python -m diffstride.experiments.report`.

TensorFlow is imported only inside `_startup_stderr`, which holds back its
native start-up notices; nothing here imports it at module level.
"""

import contextlib
import importlib.util
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import gin

_HERE = os.path.dirname(os.path.abspath(__file__))

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


def gin_dir() -> str:
  """The folder of the shipped gin configs: `gin/` next to this file (a
  clone or an editable install), else the installed package data
  `diffstride/experiments/configs`. Found without importing `diffstride`
  (which would start TensorFlow before `_startup_stderr`)."""
  clone = os.path.join(_HERE, 'gin')
  if os.path.isfile(os.path.join(clone, 'quickstart.gin')):
    return clone
  spec = importlib.util.find_spec('diffstride')
  if spec is None or not spec.submodule_search_locations:
    raise app.UsageError('The diffstride package is not installed: no gin '
                         f'configs in {clone} nor in the package.')
  return os.path.join(list(spec.submodule_search_locations)[0],
                      'experiments', 'configs')


def _prog() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else (
      'diffstride-train')


def _resolve(path: str, configs: str) -> str:
  for candidate in (path, os.path.join(configs, path)):
    if os.path.exists(candidate):
      return candidate
  raise app.UsageError(f'Gin file {path!r} not found (looked in the current '
                       f'directory and in {configs}).')


def _run_name(gin_file: str, configs: str) -> str:
  """`quickstart` for a file at the top of the configs folder (or of any
  folder named `gin`), else `<its folder>_<its name>`: `cifar10_diffstride`
  for `cifar10/diffstride.gin`."""
  path = os.path.abspath(gin_file)
  stem = os.path.splitext(os.path.basename(path))[0]
  folder = os.path.dirname(path)
  parent = os.path.basename(folder)
  top = parent == 'gin' or (
      os.path.realpath(folder) == os.path.realpath(configs))
  return stem if top else f'{parent}_{stem}'


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
  """The training command's main, for `absl.app.run`."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  prog = _prog()
  configs = gin_dir()
  files = [_resolve(f, configs)
           for f in flags.FLAGS.gin_file + flags.FLAGS.gin_config]
  if not files:
    example = ('gin/quickstart.gin' if os.path.basename(configs) == 'gin'
               else 'quickstart.gin')
    raise app.UsageError(f'Give at least one --gin_file (e.g. {example}).')
  verbose = flags.FLAGS.verbose
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
    logging.set_verbosity(logging.WARNING)
  with _startup_stderr(verbose):
    # Importing the harness registers the package's configurables with gin.
    from diffstride.experiments import console  # pylint: disable=g-import-not-at-top
    from diffstride.experiments import rerun_guard  # pylint: disable=g-import-not-at-top
    from diffstride.experiments import training  # pylint: disable=g-import-not-at-top
    from diffstride.experiments import optional  # pylint: disable=g-import-not-at-top
    if 'tensorflow' in sys.modules and optional.available('tensorflow'):
      # Already imported (the TensorFlow backend, or tf.io.gfile): its
      # device plugins' notices too.
      optional.tf.config.list_physical_devices()
  console.enable()
  gin.add_config_file_search_path(configs)
  bindings = list(flags.FLAGS.gin_bindings)
  if flags.FLAGS.seed is not None:
    bindings.append(f'train.seed = {flags.FLAGS.seed}')
  try:
    gin.parse_config_files_and_bindings(files, bindings)
  except (ValueError, KeyError, TypeError, ImportError) as e:
    sys.stderr.write(f'{prog}: the gin configuration is invalid:\n{e}\n')
    return 2
  seed = _bound('train.seed', 0)
  workdir = flags.FLAGS.workdir or _bound('train.workdir')
  if not workdir:
    workdir = os.path.join('runs',
                           f'{_run_name(files[-1], configs)}-seed{seed}')
  print(f'workdir: {workdir}', flush=True)
  with gin.unlock_config():
    gin.bind_parameter('train.workdir', workdir)
  try:
    metrics = training.train(
        dry_run=flags.FLAGS.dry_run,
        allow_config_change=flags.FLAGS.allow_config_change)
  except rerun_guard.ConfigChangedError as e:
    sys.stderr.write(f'{prog}: {e}\n')
    return 3
  except optional.TensorFlowMissingError as e:
    sys.stderr.write(f'{prog}: {e}\n')
    return 2
  if metrics:
    print(console.summary(metrics, workdir), flush=True)
  return 0


_TRAIN_USAGE = """Runs an experiment from gin files (see train.py in the repository).

    diffstride-train --gin_file=quickstart.gin
    diffstride-train --gin_file=cifar10/diffstride.gin \\
        --gin_bindings='STRIDE_INIT = (3, 2, 3)' --workdir=runs/c10_323 --seed=1

Gin files are looked up as given, then in the gin configs the package ships
(the clone's gin/ folder in an editable install).
The workdir is, in order: `--workdir`, a `train.workdir` binding, or
`runs/<name of the last gin file>-seed<seed>`. Rerunning the same command
resumes an interrupted run from its last backup.
"""


def train_main():
  """`diffstride-train`: runs `main` with absl's flags (`train.py` too)."""
  # absl's usage text is the main module's docstring and key flags: those of
  # this module, which `train.py` or the command's script only imports.
  main_module = sys.modules.get('__main__')
  if main_module is not None and not main_module.__doc__:
    main_module.__doc__ = _TRAIN_USAGE
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


def report_main():
  """`diffstride-report`: the reproduction report's command line
  (`python -m diffstride.experiments.report`), without TensorFlow's native
  start-up notices."""
  with _startup_stderr(verbose=False):
    from diffstride.experiments import report  # pylint: disable=g-import-not-at-top
  sys.exit(report.main(sys.argv[1:], prog='diffstride-report'))
