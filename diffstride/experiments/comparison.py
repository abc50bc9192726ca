"""The all-methods comparison in the report: one table and one figure.

`comparison_table(runs)`: per dataset, one row per (method, stride
initialisation, complexity weight lambda): test top-1, shift consistency
(circular and crop-and-pad), convolution MMACs per example and the final
strides of the learned-stride methods, each the mean ± sample std over
seeds. `plot_methods_vs_compute(runs, path)`: per dataset, test top-1
against conv MMACs per example, one marker per method (colour) and stride
initialisation (fill), DiffStride with the penalty as a line through its
lambdas; mean ± std over seeds in both directions. Written by
`diffstride.experiments.report` as comparison.md and
methods_vs_compute.png when the runs hold at least two methods on a dataset.
"""

from typing import Dict, List, Sequence, Tuple

from diffstride import methods
from diffstride import shifts
from diffstride.experiments import runs as runs_lib

GroupKey = Tuple[str, str, float, str]  # (method, init, lambda, variant)


def _groups(runs: Sequence[runs_lib.Run]) -> Dict[str, Dict[GroupKey, List]]:
  """{dataset: {(method, init, lambda, variant): [runs]}} of the datasets
  with at least two methods, in the registry's, lambda's, variant's and
  initialisation's order."""
  out = {}
  for dataset in sorted({r.dataset for r in runs}):
    subset = [r for r in runs if r.dataset == dataset]
    order = runs_lib.methods_in(subset)
    if len(order) < 2:
      continue
    groups = {}
    for r in sorted(subset, key=lambda r: (order.index(r.method),
                                           r.weight, r.variant,
                                           runs_lib.init_key(r.init))):
      groups.setdefault((r.method, r.init, r.weight, r.variant),
                        []).append(r)
    out[dataset] = groups
  return out


def _learns(method: str) -> bool:
  return method in methods.keys() and methods.get(method).learns_strides


def comparison_table(runs: Sequence[runs_lib.Run]) -> str:
  """Markdown (see the module docstring); '' when no dataset has two
  methods."""
  out = []
  for dataset, groups in _groups(runs).items():
    shift = sorted({(e['max_shift'], e['unit']) for g in groups.values()
                    for r in g if (e := r.metrics.get('shift_consistency'))})
    where = ', '.join(f'up to {k} {unit}' for k, unit in shift) or 'not run'
    out.append(f'**{dataset}**: mean ± std over seeds (n seeds); shift '
               f'consistency: same top-1 class for two random shifts '
               f'({where})\n')
    out.append('| method | stride init. | lambda | test top-1 (%) | '
               'consistency, circular (%) | consistency, crop and pad (%) | '
               'conv MMACs / example | final strides (mean over seeds) |')
    out.append('|---|---|---|---|---|---|---|---|')
    for (method, init, weight, variant), group in groups.items():
      name = runs_lib.label(method) + (f' ({variant})' if variant else '')
      row = [name, init, f'{weight:g}' if weight else '0',
             runs_lib.cell([r.top1 for r in group])]
      for form in shifts.FORMS:
        row.append(runs_lib.cell(
            [r.metrics['shift_consistency'][form] for r in group
             if 'shift_consistency' in r.metrics]))
      mmacs = [v for r in group
               if (v := runs_lib.complexity_of(r, 'conv_mmacs')) is not None]
      row.append(runs_lib.cell(mmacs, scale=1.0))
      row.append(runs_lib.mean_final_strides(group) if _learns(method)
                 else '(fixed)')
      out.append('| ' + ' | '.join(row) + ' |')
    out.append('')
  return '\n'.join(out)


def plot_methods_vs_compute(runs: Sequence[runs_lib.Run], path: str) -> bool:
  """The figure (see the module docstring); False when there is nothing to
  plot."""
  by_dataset = _groups(runs)
  if not by_dataset:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  all_methods = runs_lib.methods_in(runs)
  colours = {m: f'C{i % 10}' for i, m in enumerate(all_methods)}
  inits = sorted({r.init for r in runs}, key=runs_lib.init_key)
  markers = dict(zip(inits, 'osD^v<>p'))
  fig, axes = plt.subplots(1, len(by_dataset), squeeze=False,
                           figsize=(5.2 * len(by_dataset), 4.4))
  for ax, (dataset, groups) in zip(axes[0], by_dataset.items()):
    sweeps = {}
    for (method, init, weight, variant), group in groups.items():
      xs = [runs_lib.complexity_of(r, 'conv_mmacs') for r in group]
      if any(x is None for x in xs):
        continue
      (x, x_std), (y, y_std) = (runs_lib.mean_std(xs), runs_lib.mean_std(
          [100 * r.top1 for r in group]))
      filled = init == inits[0]
      ax.errorbar(x, y, xerr=x_std, yerr=y_std, fmt=markers.get(init, 'o'),
                  color=colours[method], capsize=2, markersize=6,
                  markerfacecolor=colours[method] if filled else 'white')
      if method == 'diffstride':
        sweeps.setdefault((init, variant), []).append((x, y, weight))
    for (init, variant), points in sweeps.items():
      if len(points) < 2:
        continue
      points.sort()
      ax.plot([p[0] for p in points], [p[1] for p in points], '-',
              color=colours['diffstride'], alpha=0.5)
      for x, y, weight in points:
        if weight:
          ax.annotate(f'λ={weight:g}', (x, y), fontsize=7,
                      textcoords='offset points', xytext=(4, -9))
    ax.set_title(dataset)
    ax.set_xlabel('convolution MMACs per example')
    ax.set_ylabel('test top-1 (%)')
    ax.grid(alpha=0.3)
  handles = [plt.Line2D([], [], color=colours[m], marker='o', linestyle='',
                        label=runs_lib.label(m)) for m in all_methods]
  handles += [plt.Line2D([], [], color='grey', marker=markers.get(i, 'o'),
                         linestyle='', markerfacecolor=(
                             'grey' if i == inits[0] else 'white'),
                         label=f'init. {i}') for i in inits]
  fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6),
             fontsize=8, frameon=False)
  fig.suptitle('Test top-1 against compute, every method (mean ± std over '
               'seeds; the DiffStride line joins its complexity weights)',
               fontsize=9)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
