"""examples/compare_methods.py: the plan, and its --quick version end to end
(two real runs, the report's comparison table, a rerun that skips them)."""

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


def test_dry_run_plans_every_method_dataset_init_and_seed(tmp_path):
  out = _run(['--dry_run', '--runs_dir', str(tmp_path)])
  runs = len(methods.keys()) * 3 * 2 * 3 + 2 * 3 * 3  # + lambda runs.
  assert out.startswith(f'{runs} runs (0 finished)')
  workdirs = [l.split()[0] for l in out.splitlines()[1:]]
  assert len(workdirs) == len(set(workdirs)) == runs
  assert os.path.join(str(tmp_path), 'textures', 'diffstride-lambda0.3',
                      '222', 'seed2') in workdirs
  assert 'estimated' in out.splitlines()[0]
  assert not os.listdir(tmp_path)  # Nothing trained.


@pytest.mark.slow
def test_quick_comparison_writes_the_table_and_a_rerun_skips(tmp_path):
  args = ['--quick', '--runs_dir', str(tmp_path / 'runs'), '--out',
          str(tmp_path / 'report')]
  out = _run(args)
  assert out.count('top-1') == 2, out
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
