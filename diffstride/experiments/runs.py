"""Finished training runs as the report reads them, and how a table cell
shows a group of them.

`load_run(workdir)` reads a `train.py` workdir (metrics.json, config.gin,
strides.jsonl, export/export.json) into a `Run`; runs written before
metrics.json had a field fall back to config.gin. `cell` formats a group's
values as 'mean ± std (n)', `label` names a method, `methods_in` and
`init_key` give the tables' order. Used by `diffstride.experiments.report`
and `diffstride.experiments.consistency`.
"""

import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from diffstride import methods
from diffstride.experiments import console
from diffstride.experiments import model_info


@dataclasses.dataclass
class Run:
  """One finished training run (one seed)."""
  path: str
  dataset: str
  method: str
  init: str                 # e.g. '(3, 2, 3)'
  seed: int
  weight: float             # complexity lambda
  top1: float               # test top-1 in [0, 1]
  metrics: Dict[str, Any]
  history: List[Dict[str, Any]]   # strides.jsonl records
  export: Optional[Dict[str, Any]] = None
  # What else differs from the method's gin file: '' or e.g. 'compute
  # form, no stem layer' (`variant_of`).
  variant: str = ''

  @property
  def axis_names(self) -> Tuple[str, str]:
    names = self.metrics.get('axis_names') or model_info.DEFAULT_STRIDE_AXES
    return tuple(names[:2])


def label(key: str) -> str:
  """A method's name for tables: the registry's label, else the key."""
  return methods.get(key).label if key in methods.keys() else key


def format_init(init) -> str:
  if init is None:
    return '?'
  def one(v):
    if isinstance(v, (list, tuple)):
      return '(' + ', '.join(one(x) for x in v) + ')'
    v = float(v)
    return str(int(v)) if v.is_integer() else f'{v:g}'
  return one(list(init))


def variant_of(metrics: Dict[str, Any], config: str) -> str:
  """What a run changed beyond its method, stride init. and lambda, for
  tables: the complexity penalty's form when it is not the paper's (with a
  lambda > 0), and 'no stem layer' for `Resnet.stem_pooling = False`."""
  parts = []
  if metrics.get('complexity_weight') and metrics.get(
      'complexity_form', 'paper') != 'paper':
    parts.append(f"{metrics['complexity_form']} form")
  if re.search(r'^\s*Resnet\.stem_pooling\s*=\s*False\s*$', config,
               re.MULTILINE):
    parts.append('no stem layer')
  return ', '.join(parts)


def _from_config(config: str, pattern: str):
  match = re.search(pattern, config, re.MULTILINE)
  return match.group(1).strip() if match else None


def load_run(path: str) -> Run:
  """Reads a run directory.

  Raises:
    FileNotFoundError: if there is no metrics.json (the run did not finish).
  """
  metrics_path = os.path.join(path, 'metrics.json')
  if not os.path.exists(metrics_path):
    raise FileNotFoundError(f'{path}: no metrics.json (unfinished run?)')
  metrics = json.load(open(metrics_path))
  config_path = os.path.join(path, 'config.gin')
  config = open(config_path).read() if os.path.exists(config_path) else ''
  method = metrics.get('method')
  if method is None:
    pooling = _from_config(config, r'pooling_cls\s*=\s*@?([\w.]+)')
    name = pooling.split('.')[-1] if pooling not in (None, 'None') else None
    found = methods.for_layer_name(name)
    method = found.key if found else pooling
  init = metrics.get('stride_init')
  init = (format_init(init) if init is not None else
          _from_config(config, r'^STRIDE_INIT\s*=\s*(.*)$') or '?')
  weight = metrics.get('complexity_weight')
  if weight is None:
    weight = float(_from_config(config, r'complexity_weight\s*=\s*([\d.eE+-]+)')
                   or 0.0)
  history = []
  jsonl = os.path.join(path, 'strides.jsonl')
  if os.path.exists(jsonl):
    history = [json.loads(line) for line in open(jsonl) if line.strip()]
  export = None
  export_path = os.path.join(path, 'export', 'export.json')
  if os.path.exists(export_path):
    export = json.load(open(export_path))
  return Run(path=path, dataset=metrics.get('dataset', '?'), method=method,
             init=init, seed=int(metrics.get('seed', 0)), weight=float(weight),
             top1=float(metrics['test_top1']), metrics=metrics,
             history=history, export=export,
             variant=variant_of(metrics, config))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var)


def cell(values: Sequence[float], scale: float = 100.0,
          digits: int = 1) -> str:
  """'mean ± std (n)' of values * scale; std is the sample standard
  deviation (n - 1); '—' for no values."""
  if not values:
    return '—'
  mean, std = mean_std([v * scale for v in values])
  if len(values) == 1:
    return f'{mean:.{digits}f} (n=1)'
  return f'{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})'


def methods_in(runs: Sequence[Run]) -> List[str]:
  present = {r.method for r in runs}
  order = methods.keys()
  return ([m for m in order if m in present] +
          sorted(present - set(order)))


def init_key(init: str):
  return [float(x) for x in re.findall(r'[\d.]+', init)] or [math.inf]


def final_strides(run: Run) -> List[List[float]]:
  """The run's final strides, [layer][axis] (its complexity entry, else its
  learned strides); [] for fixed-stride methods without complexity."""
  strides = run.metrics.get('complexity', {}).get('strides')
  if strides is None:
    strides = list(run.metrics.get('learned_strides', {}).values())
  return strides


def strides_text(strides: Sequence[Sequence[float]]) -> str:
  """'(1.14, 1.16) (2.69, 2.78) ...': one pair per layer."""
  return ' '.join(console.pair_text(s) for s in strides)


def mean_final_strides(group: Sequence[Run]) -> str:
  """`strides_text` of the final strides averaged over the runs (those of
  the first run when their layers differ)."""
  all_strides = [final_strides(r) for r in group]
  if not all_strides or any(len(s) != len(all_strides[0])
                            for s in all_strides):
    return strides_text(all_strides[0]) if all_strides else ''
  return strides_text([[sum(s[i][a] for s in all_strides) / len(all_strides)
                        for a in range(len(all_strides[0][i]))]
                       for i in range(len(all_strides[0]))])


def complexity_of(run: Run, key: str) -> Optional[float]:
  """A value of the run's metrics.json `complexity` entry ('paper',
  'conv_mmacs', ...); None when absent."""
  value = run.metrics.get('complexity', {}).get(key)
  return None if value is None else float(value)
