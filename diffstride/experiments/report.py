r"""The reproduction report: tables and figures from finished runs.

    python -m diffstride.experiments.report RUN_DIR [RUN_DIR ...] --out DIR \
        [--benchmark cost_benchmark.json]

(`diffstride-report` once the package is installed, same arguments). Every
RUN_DIR is a workdir written by `train.py` (metrics.json, config.gin,
strides.jsonl); RUN_DIR/export/export.json (from `python -m
diffstride.experiments.export_run`) is picked up when present. Writes to DIR:

  report.md                 the tables below, with links to the figures;
  accuracy.md               test accuracy (%), mean ± std over seeds, per
                            dataset x stride initialisation (rows) x method
                            (columns), runs without complexity penalty; the
                            paper's numbers beside ours where known;
  consistency.md            shift consistency (%, mean ± std over seeds)
                            per dataset x method x stride initialisation,
                            circular and crop-and-pad, beside the accuracy
                            (metrics.json's `shift_consistency`, see
                            `diffstride.experiments.consistency`; '—' for
                            runs without it);
  complexity.md             the lambda sweep: accuracy, penalty, conv MMACs
                            and final strides per lambda, and the strided-
                            convolution reference points;
  comparison.md             every method side by side, per dataset: test
                            top-1, shift consistency, conv MMACs per
                            example, final strides, per stride
                            initialisation and lambda
                            (`diffstride.experiments.comparison`);
  export.md                 accuracy of the exported fixed-stride models;
  cost.md                   per-step time and peak memory (from --benchmark);
  stride_trajectories.png   learned strides per layer and axis over training;
  final_strides.png         distribution of the final strides per layer;
  accuracy_vs_complexity.png  the lambda sweep against strided convolutions;
  methods_vs_compute.png    every method's accuracy against its conv MMACs.

Runs are grouped by (dataset, method, stride initialisation, lambda); seeds are
the repeats. Fields come from metrics.json; runs written before these fields
existed fall back to reading config.gin.
"""

import collections
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from diffstride.experiments import comparison
from diffstride.experiments import consistency
from diffstride.experiments import runs as runs_lib

# The report's readers of run directories (`diffstride.experiments.runs`).
Run = runs_lib.Run
load_run = runs_lib.load_run

# Published numbers (test accuracy %, ResNet-18).
# The paper's Table 1 (Riad et al., ICLR 2022): mean ± std over 3 runs per
# initialisation of the three downsampling stages, as quoted by a secondary
# source (the issue tracker of this project), not read off the paper itself.
_TABLE1_INITS = ('(2, 2, 2)', '(2, 2, 3)', '(1, 3, 1)', '(3, 1, 3)',
                 '(3, 1, 2)', '(3, 2, 3)')
_TABLE1 = {  # dataset: per init, (strided conv, spectral pooling, DiffStride)
    'cifar10': ((91.4, 0.2, 92.4, 0.1, 92.5, 0.1),
                (90.5, 0.1, 92.2, 0.2, 92.8, 0.1),
                (90.0, 0.4, 91.1, 0.1, 92.4, 0.1),
                (85.7, 0.1, 90.9, 0.2, 92.4, 0.1),
                (86.4, 0.1, 90.9, 0.2, 92.3, 0.1),
                (82.0, 0.6, 89.2, 0.2, 92.3, 0.1)),
    'cifar100': ((66.8, 0.2, 73.7, 0.1, 73.4, 0.5),
                 (63.4, 0.5, 73.7, 0.2, 73.5, 0.0),
                 (64.9, 0.5, 70.3, 0.3, 73.4, 0.2),
                 (55.3, 0.8, 69.4, 0.4, 73.7, 0.4),
                 (56.2, 0.3, 69.9, 0.2, 73.4, 0.3),
                 (48.2, 0.2, 66.6, 0.5, 73.6, 0.4)),
}
_PAPER_METHODS = ('strided_conv', 'spectral_pooling', 'diffstride')
# {(dataset, init, method): (mean, std)}.
PAPER_TABLE1 = {
    (dataset, init, method): (row[2 * i], row[2 * i + 1])
    for dataset, rows in _TABLE1.items()
    for init, row in zip(_TABLE1_INITS, rows)
    for i, method in enumerate(_PAPER_METHODS)}
# The paper's mean over its six initialisations.
PAPER_MEAN = {
    ('cifar10', 'strided_conv'): 87.7, ('cifar10', 'spectral_pooling'): 91.1,
    ('cifar10', 'diffstride'): 92.4,
    ('cifar100', 'strided_conv'): 59.1,
    ('cifar100', 'spectral_pooling'): 70.6,
    ('cifar100', 'diffstride'): 73.5,
}
# The official repository's README (pre-activation ResNet-18 with mixup), at
# strides (1, 1, 2, 2, 2) and (1, 1, 3, 2, 3): {(dataset, init, method):
# (mean, std or None)}.
OFFICIAL_README = {
    ('cifar10', '(2, 2, 2)', 'strided_conv'): (91.06, None),
    ('cifar10', '(2, 2, 2)', 'spectral_pooling'): (93.49, None),
    ('cifar10', '(2, 2, 2)', 'diffstride'): (94.20, None),
    ('cifar10', '(3, 2, 3)', 'strided_conv'): (89.21, 0.27),
    ('cifar10', '(3, 2, 3)', 'spectral_pooling'): (92.00, 0.08),
    ('cifar10', '(3, 2, 3)', 'diffstride'): (94.19, 0.15),
    ('cifar100', '(2, 2, 2)', 'strided_conv'): (65.75, 0.39),
    ('cifar100', '(2, 2, 2)', 'spectral_pooling'): (72.86, 0.23),
    ('cifar100', '(2, 2, 2)', 'diffstride'): (76.08, 0.23),
    ('cifar100', '(3, 2, 3)', 'strided_conv'): (60.82, 0.42),
    ('cifar100', '(3, 2, 3)', 'spectral_pooling'): (67.74, 0.43),
    ('cifar100', '(3, 2, 3)', 'diffstride'): (76.09, 0.06),
}


def _published(entry, decimals: int, mark: str) -> str:
  """'92.5 ± 0.1*' from (mean, std) (std may be None); '' for no entry."""
  if entry is None:
    return ''
  mean, std = entry
  text = f'{mean:.{decimals}f}'
  if std is not None:
    text += f' ± {std:.{decimals}f}'
  return text + mark


def accuracy_table(runs: Sequence[runs_lib.Run]) -> str:
  """Markdown: per dataset, rows = stride initialisation, columns = methods
  (ours: mean ± std over seeds; for CIFAR, the paper's Table 1 and the
  official README beside each method), then the mean over initialisations.
  On CIFAR every initialisation of the paper gets a row, run or not. Only
  runs without penalty."""
  runs = [r for r in runs if r.weight == 0]
  out = []
  for dataset in sorted({r.dataset for r in runs}):
    subset = [r for r in runs if r.dataset == dataset]
    methods_here = runs_lib.methods_in(subset)
    has_paper = any((dataset, m) in PAPER_MEAN for m in methods_here)
    header = ['stride init.']
    for m in methods_here:
      header.append(f'{runs_lib.label(m)} (ours)')
      if has_paper:
        header += ['paper*', 'official†']
    out.append(f'**{dataset}**: test accuracy (%), mean ± std over seeds\n')
    out.append('| ' + ' | '.join(header) + ' |')
    out.append('|' + '---|' * len(header))
    run_inits = {r.init for r in subset}
    inits = sorted(run_inits | (set(_TABLE1_INITS) if has_paper else set()),
                   key=runs_lib.init_key)
    for init in inits:
      row = [init]
      for m in methods_here:
        values = [r.top1 for r in subset if r.init == init and r.method == m]
        row.append(runs_lib.cell(values) if values else '—')
        if has_paper:
          row.append(_published(PAPER_TABLE1.get((dataset, init, m)), 1, '*'))
          row.append(_published(OFFICIAL_README.get((dataset, init, m)), 2,
                                '†'))
      out.append('| ' + ' | '.join(row) + ' |')
    # The mean over the initialisations every method was run from, so that
    # the methods are compared on the same ones.
    common = [init for init in sorted(run_inits, key=runs_lib.init_key)
              if all(any(r.init == init and r.method == m for r in subset)
                     for m in methods_here)]
    if len(common) > 1 or has_paper:
      row = [f'mean over {len(common)} inits.']
      for m in methods_here:
        per_init = []
        for init in common:
          values = [r.top1 for r in subset if r.init == init and r.method == m]
          per_init.append(sum(values) / len(values))
        row.append(f'{100 * sum(per_init) / len(per_init):.1f}'
                   if per_init else '—')
        if has_paper:
          known = PAPER_MEAN.get((dataset, m))
          row += [f'{known:.1f}*' if known is not None else '', '']
      out.append('| ' + ' | '.join(row) + ' |')
    if has_paper:
      out.append('\nThe mean row averages the initialisations that every '
                 'method was run from here; the paper\'s mean is over its six. '
                 '\\* the paper, Table 1 (ResNet-18, mean ± std over 3 runs), '
                 'as quoted by a secondary source; † the official '
                 'repository\'s README (pre-activation ResNet-18 with mixup, '
                 'strides (1, 1, 2, 2, 2) and (1, 1, 3, 2, 3)).')
    out.append('')
  return '\n'.join(out)


def _sweep_runs(runs: Sequence[runs_lib.Run]):
  """(DiffStride runs grouped by (dataset, init, lambda, variant) where some
  init has a lambda > 0, strided-conv reference runs of those datasets)."""
  swept = {(r.dataset, r.init) for r in runs
           if r.method == 'diffstride' and r.weight > 0}
  groups = collections.defaultdict(list)
  for r in runs:
    if r.method == 'diffstride' and (r.dataset, r.init) in swept:
      groups[(r.dataset, r.init, r.weight, r.variant)].append(r)
  datasets = {d for d, _ in swept}
  refs = collections.defaultdict(list)
  for r in runs:
    if r.method == 'strided_conv' and r.dataset in datasets and r.weight == 0:
      refs[(r.dataset, r.init)].append(r)
  return groups, refs


def complexity_table(runs: Sequence[runs_lib.Run]) -> str:
  """Markdown table of the lambda sweep and the strided-conv references."""
  groups, refs = _sweep_runs(runs)
  if not groups:
    return ''
  out = ['| dataset | network | lambda | test acc. (%) | penalty (paper form) '
         '| conv MMACs / example | final strides (mean over seeds) |',
         '|---|---|---|---|---|---|---|']

  def mean_of(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None

  def fmt(value, digits):
    return '—' if value is None else f'{value:.{digits}f}'

  def row(dataset, network, weight, group):
    paper = mean_of([runs_lib.complexity_of(r, 'paper') for r in group])
    mmacs = mean_of([runs_lib.complexity_of(r, 'conv_mmacs') for r in group])
    return (f'| {dataset} | {network} | {weight} | '
            f'{runs_lib.cell([r.top1 for r in group])} | {fmt(paper, 3)} | '
            f'{fmt(mmacs, 1)} | {runs_lib.mean_final_strides(group)} |')

  for key in sorted(groups):
    dataset, init, weight, variant = key
    group = groups[key]
    network = f'DiffStride from {init}' + (f' ({variant})' if variant else '')
    out.append(row(dataset, network, f'{weight:g}', group))
  for key in sorted(refs, key=lambda k: (k[0], runs_lib.init_key(k[1]))):
    dataset, init = key
    group = refs[key]
    out.append(row(dataset, f'strided conv. {init}', '—', group))
  return '\n'.join(out) + '\n'


EXPORT_MODES = (('fixed_spectral', 'fixed spectral pooling, learned strides'),
                ('fixed_spectral_matched',
                 'fixed spectral pooling, DiffStride\'s map sizes'),
                ('strided_conv', 'strided conv., rounded strides'),
                ('frozen', 'same pooling, strides frozen'))


def export_table(runs: Sequence[runs_lib.Run]) -> str:
  """Markdown: accuracy of each export, before and after fine-tuning."""
  exported = [r for r in runs if r.export]
  if not exported:
    return ''
  groups = collections.defaultdict(list)
  for r in exported:
    groups[(r.dataset, r.init, r.weight, r.variant)].append(r)
  out = ['| dataset | trained | model | test acc. (%) as exported | after '
         'fine-tuning | conv MMACs / example |', '|---|---|---|---|---|---|']
  for (dataset, init, weight, variant), group in sorted(groups.items()):
    trained = f'DiffStride from {init}' + (f', lambda {weight:g}'
                                           if weight else '') + (
                                               f' ({variant})' if variant
                                               else '')
    out.append(
        f'| {dataset} | {trained} | DiffStride (source) | '
        f"{runs_lib.cell([r.export['source']['test_top1'] for r in group])} | — | "
        f"{sum(r.export['source']['conv_mmacs'] for r in group) / len(group):.1f} |")
    for mode, label in EXPORT_MODES:
      entries = [r.export['exports'][mode] for r in group
                 if mode in r.export.get('exports', {})]
      if not entries:
        continue
      before = [e['before_finetune']['test_top1'] for e in entries]
      after = [e['after_finetune']['test_top1'] for e in entries
               if 'after_finetune' in e]
      epochs = group[0].export.get('finetune_epochs', 0)
      out.append(
          f'| {dataset} | {trained} | {label} | {runs_lib.cell(before)} | '
          f"{runs_lib.cell(after) + f' ({epochs} ep.)' if after else '—'} | "
          f"{sum(e['conv_mmacs'] for e in entries) / len(entries):.1f} |")
  return '\n'.join(out) + '\n'


def cost_table(benchmark: Dict[str, Any]) -> str:
  """Markdown table from the JSON of benchmarks/cost_benchmark.py."""
  rows = benchmark['rows']
  out = [f"{benchmark['what']}; TensorFlow {benchmark['tensorflow']}, "
         f"{benchmark['cpus']} CPUs, median of {benchmark['steps']} steps "
         f"timed alternately in one process (1-minute load average "
         f"{benchmark.get('load_average_1min_at_end', float('nan')):.1f} at "
         f"the end); peak memory: {rows[0]['memory_method']}, one child "
         'process per network.\n',
         '| network | ms / step | x strided conv. | peak RSS (MB) | '
         'x strided conv. | RSS growth during the timed steps (MB) |',
         '|---|---|---|---|---|---|']
  for r in rows:
    out.append(f"| {runs_lib.label(r['variant'])} | "
               f"{r['ms_per_step']:.0f} | {r['time_ratio']:.2f}x | "
               f"{r['peak_rss_mb']:.0f} | {r['memory_ratio']:.2f}x | "
               f"{r['step_increase_mb']:.0f} |")
  return '\n'.join(out) + '\n'


# ----------------------------------------------------------------------------
# Figures.


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return plt


def _tensorboard_strides(run: runs_lib.Run) -> Dict[str, Dict[int, List[float]]]:
  """{layer: {step: [h, w]}} from the run's TensorBoard events (logged at
  the start of training and every `train.log_every_steps`); {} if none."""
  import glob  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  files = sorted(glob.glob(os.path.join(run.path, 'tensorboard', 'train',
                                        'events.*')))
  if not files:
    return {}
  from diffstride.experiments import summaries  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  found = collections.defaultdict(dict)
  for path in files:
    for step, tag, number in summaries.read_scalars(path):
      match = re.fullmatch(r'strides/(.+)/(height|width)', tag)
      if not match:
        continue
      pair = found[match.group(1)].setdefault(step, [None, None])
      pair[0 if match.group(2) == 'height' else 1] = number
  return {layer: {step: pair for step, pair in steps.items()
                  if None not in pair}
          for layer, steps in found.items()}


def _trajectory(run: runs_lib.Run):
  """(epochs, {layer: [[h, w] per point]}): from TensorBoard (fractional
  epochs = step / steps_per_epoch, from the first step), else from
  strides.jsonl (one point per epoch)."""
  steps_per_epoch = run.metrics.get('steps_per_epoch')
  tensorboard = _tensorboard_strides(run) if steps_per_epoch else {}
  if tensorboard:
    all_steps = sorted({s for steps in tensorboard.values() for s in steps})
    per_layer = {layer: [steps[s] for s in all_steps if s in steps]
                 for layer, steps in tensorboard.items()}
    if all(len(v) == len(all_steps) for v in per_layer.values()):
      return [s / steps_per_epoch for s in all_steps], per_layer
  epochs, per_layer = [], collections.defaultdict(list)
  for record in run.history:
    epochs.append(record['epoch'])
    for name, pair in record['strides'].items():
      per_layer[name].append(pair)
  return epochs, per_layer


def plot_trajectories(runs: Sequence[runs_lib.Run], path: str) -> bool:
  """One row per (dataset, init, lambda) group of DiffStride runs, one panel
  per layer; both axes (solid: height/time, dashed: width/frequency), one
  line per seed. Returns False if there is nothing to plot."""
  groups = collections.defaultdict(list)
  for r in runs:
    if r.method == 'diffstride' and r.history:
      groups[(r.dataset, r.init, r.weight, r.variant)].append(r)
  if not groups:
    return False
  keys = sorted(groups)
  num_layers = max(len(_trajectory(r)[1]) for k in keys for r in groups[k])
  plt = _plt()
  fig, axes = plt.subplots(len(keys), num_layers, squeeze=False,
                           figsize=(3.2 * num_layers, 2.4 * len(keys)),
                           sharex=True)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for row, key in enumerate(keys):
    for seed_index, run in enumerate(sorted(groups[key], key=lambda r: r.seed)):
      epochs, per_layer = _trajectory(run)
      names = run.axis_names
      for col, (layer, values) in enumerate(per_layer.items()):
        ax = axes[row][col]
        color = colors[seed_index % len(colors)]
        for axis, style in ((0, '-'), (1, '--')):
          ax.plot(epochs, [v[axis] for v in values], style, color=color,
                  label=f'{names[axis]}, seed {run.seed}')
        ax.set_title(f'{layer}', fontsize=8)
    dataset, init, weight, variant = key
    axes[row][0].set_ylabel(
        f'{dataset}\n{init}, λ={weight:g}' + (f'\n{variant}' if variant
                                              else '') + '\nstride',
        fontsize=8)
    axes[row][0].legend(fontsize=6)
  for ax in axes[-1]:
    ax.set_xlabel('epoch')
  fig.suptitle('Learned strides over training (solid: height/time, dashed: '
               'width/frequency)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_final_strides(runs: Sequence[runs_lib.Run], path: str) -> bool:
  """Distribution of the final strides per DiffStride layer and axis over all
  DiffStride runs (per dataset and lambda), as points with the mean. Runs
  of a variant (another penalty form, no stem layer) are left out: their
  layers do not line up with the others'."""
  runs = [r for r in runs if r.method == 'diffstride' and not r.variant]
  if not runs:
    return False
  plt = _plt()
  datasets = sorted({r.dataset for r in runs})
  fig, axes = plt.subplots(1, len(datasets), squeeze=False,
                           figsize=(5.5 * len(datasets), 3.4))
  for ax, dataset in zip(axes[0], datasets):
    subset = [r for r in runs if r.dataset == dataset]
    weights = sorted({r.weight for r in subset})
    names = subset[0].axis_names
    width = 0.8 / max(len(weights), 1)
    num_layers = 0
    for wi, weight in enumerate(weights):
      group = [r for r in subset if r.weight == weight]
      for r in group:
        strides = runs_lib.final_strides(r)
        num_layers = max(num_layers, len(strides))
        for layer, pair in enumerate(strides):
          for axis, marker in ((0, 'o'), (1, 'x')):
            x = layer + (wi - (len(weights) - 1) / 2) * width + (
                axis - 0.5) * width * 0.4
            ax.scatter(x, pair[axis], marker=marker, s=18,
                       color=f'C{wi}',
                       label=(f'λ={weight:g}, {names[axis]}'
                              if r is group[0] and layer == 0 else None))
    ax.set_xticks(range(num_layers))
    ax.set_xticklabels([f'layer {i + 1}' for i in range(num_layers)])
    ax.set_ylabel('final stride')
    ax.set_title(f'{dataset}: final strides of every run '
                 f'(o: {names[0]}, x: {names[1]})', fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_accuracy_vs_complexity(runs: Sequence[runs_lib.Run], path: str) -> bool:
  """Test accuracy against complexity: DiffStride per lambda (mean ± std over
  seeds), strided-conv configurations as reference points. Two panels: the
  paper's penalty and the measured convolution MMACs per example."""
  groups, refs = _sweep_runs(runs)
  if not groups:
    return False
  plt = _plt()
  datasets = sorted({k[0] for k in groups})
  fig, axes = plt.subplots(len(datasets), 2, squeeze=False,
                           figsize=(10, 3.8 * len(datasets)))
  for row, dataset in enumerate(datasets):
    for col, (key, label) in enumerate((
        ('paper', 'complexity: sum_l prod_j 1/(S_h S_w) (paper form)'),
        ('conv_mmacs', 'convolution MMACs per example (real map sizes)'))):
      ax = axes[row][col]
      for series, marker, color, items in (
          ('DiffStride', 'o', 'C2',
           [(k, g) for k, g in groups.items() if k[0] == dataset]),
          ('strided conv.', 's', 'C0',
           [(k, g) for k, g in refs.items() if k[0] == dataset])):
        points = []
        for k, group in sorted(items):
          xs = [runs_lib.complexity_of(r, key) for r in group]
          if any(x is None for x in xs):
            continue
          accs = [100 * r.top1 for r in group]
          x_mean, x_std = runs_lib.mean_std(xs)
          y_mean, y_std = runs_lib.mean_std(accs)
          points.append((x_mean, y_mean))
          ax.errorbar(x_mean, y_mean, xerr=x_std, yerr=y_std, fmt=marker,
                      color=color, capsize=2)
          text = f'λ={k[2]:g}' if series == 'DiffStride' else k[1]
          ax.annotate(text, (x_mean, y_mean), fontsize=7,
                      textcoords='offset points', xytext=(4, 4))
        if points:
          points.sort()
          ax.plot([p[0] for p in points], [p[1] for p in points], '-',
                  color=color, alpha=0.5, label=series)
      ax.set_xlabel(label, fontsize=8)
      ax.set_ylabel(f'{dataset} test accuracy (%)')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle('Accuracy vs complexity: DiffStride with the complexity '
               'penalty (λ) and strided-convolution reference points '
               '(mean ± std over seeds)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------


def write_report(run_dirs: Sequence[str], out_dir: str,
                 benchmark_path: Optional[str] = None) -> Dict[str, str]:
  """Writes the tables and figures; returns {name: path} of what it wrote.

  runs_lib.Run directories without metrics.json are skipped with a warning on
  stderr.
  """
  runs = []
  for path in run_dirs:
    try:
      runs.append(runs_lib.load_run(path))
    except FileNotFoundError as e:
      sys.stderr.write(f'report: skipping {e}\n')
  if not runs:
    raise ValueError('No finished run among the given directories.')
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  sections = [f'# Reproduction report\n\n{len(runs)} runs.\n']

  def add_table(name, title, text):
    if not text:
      return
    path = os.path.join(out_dir, f'{name}.md')
    with open(path, 'w') as f:
      f.write(text)
    written[name] = path
    sections.append(f'## {title}\n\n{text}')

  add_table('accuracy', 'Test accuracy', accuracy_table(runs))
  add_table('consistency', 'Shift consistency',
            consistency.consistency_table(runs))
  add_table('complexity', 'Complexity sweep', complexity_table(runs))
  add_table('comparison', 'Comparison of the methods',
            comparison.comparison_table(runs))
  add_table('export', 'Stride export', export_table(runs))
  if benchmark_path:
    add_table('cost', 'Training cost', cost_table(json.load(
        open(benchmark_path))))
  for name, fn, title in (
      ('stride_trajectories', plot_trajectories, 'Learned strides over '
       'training'),
      ('final_strides', plot_final_strides, 'Final strides'),
      ('accuracy_vs_complexity', plot_accuracy_vs_complexity,
       'Accuracy vs complexity'),
      ('methods_vs_compute', comparison.plot_methods_vs_compute,
       'Every method: accuracy vs compute')):
    path = os.path.join(out_dir, f'{name}.png')
    if fn(runs, path):
      written[name] = path
      sections.append(f'## {title}\n\n![{title}]({name}.png)\n')
  report = os.path.join(out_dir, 'report.md')
  with open(report, 'w') as f:
    f.write('\n'.join(sections))
  written['report'] = report
  return written


def main(argv=None,
         prog: str = 'python -m diffstride.experiments.report') -> int:
  """The command line (`diffstride-report` once installed)."""
  import argparse  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog=prog,
      description='Tables and figures from finished runs.')
  parser.add_argument('run_dirs', nargs='+', help='run directories')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--benchmark', default=None,
                      help='JSON written by benchmarks/cost_benchmark.py')
  args = parser.parse_args(argv)
  written = write_report(args.run_dirs, args.out, args.benchmark)
  for name, path in written.items():
    print(f'{name}: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
