"""Guarded reruns: one workdir, one experiment.

Rerunning a command in its workdir resumes the run from its backup. Before
that, `check` compares the operative gin config of the new run (the
bindings its configurables were called with, `gin.operative_config_str()`,
taken once the model and the data are built) with the one saved with the
backups (`backup/operative_config.gin`, written by `save` when training
starts). When they differ, the run stops before anything in the workdir is
written, with a `ConfigChangedError` that lists the differing bindings and
the two ways out: another `--workdir` for a new experiment, or
`--allow_config_change` (`train(allow_config_change=True)`) for a deliberate
change such as more epochs, after which the new config is the one saved.

Bindings that do not change what is computed are not compared
(`NEUTRAL_BINDINGS`: where the run writes, how much it prints, extra
callbacks).
"""

import os
import re
from typing import Dict, List, Optional


from diffstride.experiments import files

FILE_NAME = 'operative_config.gin'
NEUTRAL_BINDINGS = ('train.workdir', 'train.verbose', 'train.extra_callbacks')
# A binding starts a line: `name = value`, `scope/name.param = value`; a
# value may continue on indented lines.
_BINDING = re.compile(r'^([A-Za-z_][\w./]*)\s*=\s?(.*)$')


class ConfigChangedError(ValueError):
  """The rerun's config is not the one the workdir's backups were made with."""


def bindings(config: str) -> Dict[str, str]:
  """{binding name: value text} of a gin config string (comments, imports
  and includes left out; a value's continuation lines joined)."""
  out, name = {}, None
  for line in config.splitlines():
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
      continue
    match = _BINDING.match(line)
    if match and not line[0].isspace():
      name = match.group(1)
      out[name] = match.group(2).strip()
    elif name is not None and line[0].isspace():
      out[name] += ' ' + stripped
    else:
      name = None  # import / include lines.
  return {k: re.sub(r'\s+', ' ', v) for k, v in out.items()}


def differences(saved: str, current: str) -> List[str]:
  """'name: saved -> current' for every binding that differs (absent:
  '(unset)'), neutral bindings left out, sorted by name."""
  old, new = bindings(saved), bindings(current)
  lines = []
  for name in sorted(set(old) | set(new)):
    if name in NEUTRAL_BINDINGS or name.split('/')[-1] in NEUTRAL_BINDINGS:
      continue
    before, after = old.get(name, '(unset)'), new.get(name, '(unset)')
    if before != after:
      lines.append(f'{name}: {before} -> {after}')
  return lines


def _path(backup_dir: str) -> str:
  return os.path.join(backup_dir, FILE_NAME)


def saved_config(backup_dir: str) -> Optional[str]:
  """The config saved with the backups, or None (no backup yet)."""
  path = _path(backup_dir)
  if not files.exists(path):
    return None
  with files.open_file(path) as f:
    return f.read()


def check(backup_dir: str, config: str, allow_change: bool = False) -> bool:
  """Raises ConfigChangedError if `config` differs from the saved one.

  Returns:
    True when a change was allowed (`allow_change`), else False.
  """
  saved = saved_config(backup_dir)
  if saved is None:
    return False
  changed = differences(saved, config)
  if not changed:
    return False
  if allow_change:
    return True
  workdir = os.path.dirname(os.path.normpath(backup_dir))
  raise ConfigChangedError(
      f'{workdir} holds a run with another configuration; resuming it with '
      'this one would mix two experiments in one workdir. Differing '
      'bindings (saved -> now):\n  ' + '\n  '.join(changed) + '\n'
      'Nothing was written. Either give this run its own workdir '
      '(--workdir, or a train.workdir binding), or, for a deliberate change '
      '(e.g. more epochs), rerun with --allow_config_change '
      '(train(allow_config_change=True)).')


def save(backup_dir: str, config: str):
  """Saves `config` as the one the backups in `backup_dir` belong to."""
  files.makedirs(backup_dir)
  path = _path(backup_dir)
  with files.open_file(path + '.tmp', 'w') as f:
    f.write(config)
  files.rename(path + '.tmp', path, overwrite=True)
