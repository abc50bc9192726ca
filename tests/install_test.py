"""A wheel of the package, installed in a fresh virtual environment, runs
`diffstride-train --gin_file=quickstart.gin` and `diffstride-report` from an
empty folder: the commands, the modules and the gin configs (shipped as
`diffstride/experiments/configs`) all come from the installed wheel, not from
this clone.

The wheel is built offline from a copy of the sources (no build/ or
*.egg-info left in the clone). The virtual environment sees the test
environment's packages (--system-site-packages): the dependencies
(TensorFlow, some 600 MB, gin, ...) are not downloaded (no internet here);
only the wheel is installed into it, with --no-deps.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the build needs from the clone.
_SOURCES = ('pyproject.toml', 'README.md', 'diffstride', 'gin',
            'diffstride_cli.py', 'train.py')
_CONFIGS = 'diffstride.experiments.configs'

# A short quick start: one epoch of two steps on 128 synthetic images.
_SHORT = ['EPOCHS = 1', 'train.max_steps_per_epoch = 2',
          'train.max_eval_steps = 1', 'train.shift_consistency_max_shift = 0',
          'synthetic_frequency_arrays.num_train = 128',
          'image_datasets.max_train_examples = 128',
          'image_datasets.max_test_examples = 64']


def _expected_packages():
  """Every package of the clone: the folders of diffstride/ with an
  __init__.py, and gin/ and each of its folders as `_CONFIGS`."""
  packages = set()
  for init in glob.glob(os.path.join(ROOT, 'diffstride', '**', '__init__.py'),
                        recursive=True):
    folder = os.path.relpath(os.path.dirname(init), ROOT)
    packages.add(folder.replace(os.sep, '.'))
  for folder, _, _ in os.walk(os.path.join(ROOT, 'gin')):
    relative = os.path.relpath(folder, os.path.join(ROOT, 'gin'))
    packages.add(_CONFIGS if relative == '.' else
                 f'{_CONFIGS}.{relative.replace(os.sep, ".")}')
  return packages


def _gin_files():
  """The gin files of the clone, relative to gin/ ('/'-separated)."""
  gin = os.path.join(ROOT, 'gin')
  return {os.path.relpath(path, gin).replace(os.sep, '/')
          for path in glob.glob(os.path.join(gin, '**', '*.gin'),
                                recursive=True)}


def _env():
  """This process's environment without PYTHONPATH (which would put a clone
  on the path) and without pip's version check (offline)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP')}
  env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
  return env


def _run(args, cwd, timeout=300):
  result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, (
      f'{args} exited with {result.returncode}:\n{result.stdout[-3000:]}\n'
      f'{result.stderr[-3000:]}')
  return result


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(wheel, venv, build log): the wheel built from a copy of the sources, a
  venv with it installed, and the build's output."""
  tmp = tmp_path_factory.mktemp('install')
  source = tmp / 'source'
  source.mkdir()
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in _SOURCES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, source / name, ignore=ignore)
    else:
      shutil.copy2(path, source / name)
  dist = tmp / 'dist'
  # Offline: no index, and the build backend (setuptools) of this
  # environment instead of an isolated one.
  built = _run([sys.executable, '-m', 'pip', 'wheel', '-v', '--no-deps',
                '--no-build-isolation', '--no-index', '-w', str(dist),
                str(source)], cwd=str(tmp))
  wheels = glob.glob(str(dist / 'diffstride-*.whl'))
  assert len(wheels) == 1, wheels

  venv = tmp / 'venv'
  # Without its own pip: this environment's pip (a system site package)
  # installs into it.
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  '--without-pip', str(venv)], check=True, timeout=120)
  python = str(venv / 'bin' / 'python')
  if sys.prefix != sys.base_prefix:
    # The tests run in a virtual environment: the new one's "system" site
    # packages are the base interpreter's, so add this one's.
    purelib = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
         '["purelib"])'], check=True, capture_output=True, text=True,
        env=_env()).stdout.strip()
    import site  # pylint: disable=g-import-not-at-top
    with open(os.path.join(purelib, 'test_environment.pth'), 'w') as f:
      f.write('\n'.join(site.getsitepackages()) + '\n')
  _run([python, '-m', 'pip', 'install', '--no-deps', '--no-index',
        wheels[0]], cwd=str(tmp))
  return wheels[0], venv, built.stdout + built.stderr


@pytest.mark.slow
def test_wheel_holds_every_package_and_gin_file(installed):
  wheel, _, log = installed
  # setuptools ships a folder missing from `packages` as data of its parent,
  # deprecated ("Package would be ignored").
  assert 'would be ignored' not in log, (
      'a package (a folder of gin/?) is missing from pyproject.toml\'s '
      'packages:\n' + '\n'.join(
          line for line in log.splitlines() if 'absent from' in line))
  names = set(zipfile.ZipFile(wheel).namelist())
  packages = _expected_packages()
  try:
    import tomllib  # pylint: disable=g-import-not-at-top
  except ImportError:  # Python < 3.11.
    tomllib = None
  if tomllib is not None:
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
      listed = set(tomllib.load(f)['tool']['setuptools']['packages'])
    assert listed == packages, (
        'pyproject.toml [tool.setuptools] packages must list every package '
        f'and every folder of gin/: missing {sorted(packages - listed)}, '
        f'extra {sorted(listed - packages)}')
  for package in packages:
    if not package.startswith(_CONFIGS):
      assert package.replace('.', '/') + '/__init__.py' in names, package
  assert 'diffstride_cli.py' in names
  prefix = _CONFIGS.replace('.', '/') + '/'
  shipped = {name[len(prefix):] for name in names
             if name.startswith(prefix) and name.endswith('.gin')}
  assert shipped == _gin_files(), (
      f'missing {sorted(_gin_files() - shipped)}, '
      f'extra {sorted(shipped - _gin_files())}')
  assert len(shipped) >= 100  # 106 when written.
  assert prefix + 'README.md' in names
  entry_points = next(n for n in names if n.endswith('entry_points.txt'))
  text = zipfile.ZipFile(wheel).read(entry_points).decode()
  assert 'diffstride-train = diffstride_cli:train_main' in text, text
  assert 'diffstride-report = diffstride_cli:report_main' in text, text


@pytest.mark.slow
def test_commands_run_from_an_empty_folder(installed, tmp_path):
  _, venv, _ = installed
  bin_dir = venv / 'bin'
  cwd = tmp_path / 'empty'
  cwd.mkdir()
  # The modules the commands import are the venv's, not a clone's (this
  # environment may have an editable install of one, and PYTHONPATH is
  # cleared). find_spec gives the file `import` loads, without starting
  # TensorFlow.
  where = json.loads(_run([str(bin_dir / 'python'), '-c', '''
import importlib.util, json, sysconfig
import diffstride_cli
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "diffstride": importlib.util.find_spec("diffstride").origin,
    "diffstride_cli": diffstride_cli.__file__,
    "gin_dir": diffstride_cli.gin_dir()}))
'''], cwd=str(cwd)).stdout)
  purelib = os.path.realpath(where['purelib'])
  for name in ('diffstride', 'diffstride_cli', 'gin_dir'):
    path = os.path.realpath(where[name])
    assert os.path.commonpath([path, purelib]) == purelib, (
        f'the venv takes {name} from {where[name]}, not from its own install '
        f'in {where["purelib"]} (an editable install or a path entry wins)')
  assert where['gin_dir'].endswith(os.path.join('experiments', 'configs'))

  # absl exits with 1 after the help.
  usage = subprocess.run([str(bin_dir / 'diffstride-train'), '--helpshort'],
                         cwd=str(cwd), env=_env(), capture_output=True,
                         text=True, timeout=120).stdout
  assert 'diffstride-train --gin_file=quickstart.gin' in usage, usage
  assert '--gin_bindings' in usage and '--[no]dry_run' in usage, usage

  result = _run([str(bin_dir / 'diffstride-train'),
                 '--gin_file=quickstart.gin'] +
                [f'--gin_bindings={b}' for b in _SHORT], cwd=str(cwd))
  lines = result.stdout.splitlines()
  assert lines[0] == 'workdir: runs/quickstart-seed0', result.stdout
  assert lines[1].startswith('data: synthetic_frequency, '), result.stdout
  assert any(line.startswith('epoch 1/1: ') for line in lines), result.stdout
  assert any(line.startswith('test top-1 ') for line in lines), result.stdout
  assert lines[-1].startswith('workdir runs/quickstart-seed0: ') and (
      'metrics.json' in lines[-1]), result.stdout
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  workdir = cwd / 'runs' / 'quickstart-seed0'
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert metrics['epochs_run_this_time'] == 1, metrics

  result = _run([str(bin_dir / 'diffstride-report'),
                 os.path.join('runs', 'quickstart-seed0'), '--out', 'report'],
                cwd=str(cwd))
  assert 'report: report/report.md' in result.stdout, result.stdout
  report = (cwd / 'report' / 'report.md').read_text()
  assert report.strip(), report
  assert sorted(os.listdir(cwd)) == ['report', 'runs']


@pytest.mark.slow
def test_installed_configs_resolve_includes(installed, tmp_path):
  """builtin/diffstride.gin includes base/ files: they are found in the
  installed configs folder, and the run is named after the folder, as
  with the clone's gin/."""
  _, venv, _ = installed
  result = _run([str(venv / 'bin' / 'diffstride-train'),
                 '--gin_file=builtin/diffstride.gin', '--dry_run'],
                cwd=str(tmp_path))
  lines = result.stdout.splitlines()
  assert lines[0] == 'workdir: runs/builtin_diffstride-seed0', result.stdout
  assert 'Total params' in result.stdout, result.stdout
