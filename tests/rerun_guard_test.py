"""diffstride.experiments.rerun_guard: which bindings count as a change."""

import pytest

from diffstride.experiments import rerun_guard

_SAVED = """# Parameters for train:
# ==============================================================================
train.epochs = %EPOCHS
train.verbose = 0
train.workdir = '/runs/a'
EPOCHS = 4
Resnet.filters = \\
    [16, 16, 32, 64, 64]
import diffstride.experiments
"""


def test_bindings_join_continuation_lines_and_skip_the_rest():
  assert rerun_guard.bindings(_SAVED) == {
      'train.epochs': '%EPOCHS', 'train.verbose': '0',
      'train.workdir': "'/runs/a'", 'EPOCHS': '4',
      'Resnet.filters': '\\ [16, 16, 32, 64, 64]'}


def test_differences_leave_out_where_and_how_loud():
  current = (_SAVED.replace('EPOCHS = 4', 'EPOCHS = 6')
             .replace("'/runs/a'", "'/runs/b'")
             .replace('train.verbose = 0', "train.verbose = 'auto'")
             + 'learning_rate.base = 0.1\n')
  assert rerun_guard.differences(_SAVED, current) == [
      'EPOCHS: 4 -> 6', 'learning_rate.base: (unset) -> 0.1']
  assert rerun_guard.differences(_SAVED, _SAVED) == []


def test_check_refuses_a_change_unless_allowed(tmp_path):
  backup = str(tmp_path / 'run' / 'backup')
  assert rerun_guard.check(backup, _SAVED) is False  # Nothing saved yet.
  rerun_guard.save(backup, _SAVED)
  assert rerun_guard.check(backup, _SAVED) is False
  changed = _SAVED.replace('EPOCHS = 4', 'EPOCHS = 6')
  with pytest.raises(rerun_guard.ConfigChangedError, match='EPOCHS: 4 -> 6'):
    rerun_guard.check(backup, changed)
  assert rerun_guard.check(backup, changed, allow_change=True) is True
  assert rerun_guard.saved_config(backup) == _SAVED
