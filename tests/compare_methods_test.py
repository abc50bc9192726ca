"""examples/compare_methods.py: the plan, and its --quick version end to end
(two real runs, the report's comparison table, a rerun that skips them)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from diffstride import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'examples', 'compare_methods.py')


def _run(args, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                       text=True, env=env, timeout=timeout, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def _example(name):
  """examples/<name>.py as a module (its main, plan, ...)."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'examples', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dry_run_plans_every_method_dataset_init_and_seed(tmp_path, capsys):
  assert _example('compare_methods').main(
      ['--dry_run', '--runs_dir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  runs = len(methods.keys()) * 3 * 2 * 3 + 2 * 3 * 3  # + lambda runs.
  assert out.startswith(f'{runs} runs (0 finished)')
  workdirs = [l.split()[0] for l in out.splitlines()[1:]]
  assert len(workdirs) == len(set(workdirs)) == runs
  assert os.path.join(str(tmp_path), 'textures', 'diffstride-lambda0.3',
                      '222', 'seed2') in workdirs
  assert 'estimated' in out.splitlines()[0]
  assert not os.listdir(tmp_path)  # Nothing trained.


def test_penalty_study_plans_each_form_and_stem_choice_once():
  compare = _example('compare_methods')
  args = compare.parse_args(
      ['--datasets', 'textures', '--methods', 'diffstride', '--inits', '323',
       '--seeds', '0', '--lambdas', '0,0.3', '--penalty_init', '323',
       '--penalty_forms', 'paper,compute', '--penalty_stems', 'learned,none'])
  runs = compare.plan(args)
  names = [os.path.relpath(r.workdir('r'), os.path.join('r', 'textures'))
           for r in runs]
  # Lambda 0 with the stem learned is the plain run: planned once.
  assert names == [os.path.join(n, '323', 'seed0') for n in (
      'diffstride', 'diffstride-nostem', 'diffstride-lambda0.3',
      'diffstride-lambda0.3-nostem', 'diffstride-lambda0.3-compute',
      'diffstride-lambda0.3-compute-nostem')]
  bindings = runs[-1].bindings(args)
  assert "train.complexity_form = 'compute'" in bindings
  assert 'train.complexity_weight = 0.3' in bindings
  assert 'Resnet.stem_pooling = False' in bindings
  assert 'Resnet.stem_pooling = False' not in runs[2].bindings(args)
  with pytest.raises(SystemExit):
    compare.parse_args(['--penalty_stems', 'fixed'])


def test_a_run_variant_is_its_form_and_stem_choice():
  from diffstride.experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  variant = runs_lib.variant_of
  assert variant({'complexity_weight': 0.3, 'complexity_form': 'paper'},
                 '') == ''
  assert variant({'complexity_weight': 0.0, 'complexity_form': 'compute'},
                 '') == ''  # No penalty: its form does not apply.
  assert variant({'complexity_weight': 1.0, 'complexity_form': 'compute'},
                 'Resnet.stem_pooling = False\n') == (
                     'compute form, no stem layer')
  assert variant({}, '# Resnet.stem_pooling = False\n') == ''


def test_penalty_gradients_stem_gets_the_whole_penalty():
  """d P / d log S of the first layer, both axes, is -2 P in the paper's
  form (every term holds the first stride), and each later layer's a
  smaller tail of it."""
  gradients = _example('penalty_gradients')
  import keras  # pylint: disable=g-import-not-at-top
  from diffstride import resnet  # pylint: disable=g-import-not-at-top
  import diffstride  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = resnet.Resnet([16, 16, 32, 64, 64], [1, 1, 3, 2, 3], id_only=[0],
                        num_layers=1, kernel_size=3, channels_first=False,
                        num_output_classes=6,
                        pooling_cls=diffstride.DiffStride)
  model(np.zeros((1, 32, 32, 1), 'float32'))
  penalty, grads = gradients.penalty_and_log_gradients(model, 'paper')
  assert len(grads) == 4
  assert grads[0] == pytest.approx(-2 * penalty, rel=1e-5)
  assert all(a < b < 0 for a, b in zip(grads[:-1], grads[1:]))
  # The first stride's own term, 1 / 1.143^2, is most of the penalty.
  assert penalty - abs(grads[1]) / 2 == pytest.approx(
      (28 / 32) ** 2, rel=1e-4)
  assert keras.backend.backend() == 'tensorflow'


@pytest.mark.slow
def test_quick_comparison_writes_the_table_and_a_rerun_skips(tmp_path):
  args = ['--quick', '--runs_dir', str(tmp_path / 'runs'), '--out',
          str(tmp_path / 'report')]
  out = _run(args)  # --jobs 2 (the default): one run in each process.
  assert out.count('top-1') == 2, out
  assert '(process 1/2) [1/1]' in out and '(process 2/2) [1/1]' in out, out
  table = open(tmp_path / 'report' / 'comparison.md').read()
  rows = [l for l in table.splitlines() if l.startswith('| ')][1:]
  assert [r.split('|')[1].strip() for r in rows] == ['Strided conv.',
                                                      'Spectral pooling']
  assert all('(2, 2, 2)' in r and '(n=1)' in r for r in rows)
  assert (tmp_path / 'report' / 'methods_vs_compute.png').exists()
  again = _run(args)
  assert again.count('skipped (finished)') == 2, again
  assert 'top-1' not in again
  assert '(2 finished)' in again.splitlines()[0]
