"""The report on small synthetic run directories: tables, figures, CLI."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from diffstride.experiments import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _strides(init, final, layers=3):
  del init
  return [[final + 0.1 * i, final - 0.1 * i] for i in range(layers)]


def _write_run(root, name, *, dataset='synthetic_frequency',
               method='diffstride', init=(3, 2, 3), seed=0, weight=0.0,
               top1=0.9, paper=0.5, mmacs=10.0, final=2.5, epochs=3,
               with_fields=True, config_extra=''):
  path = os.path.join(str(root), name)
  os.makedirs(path)
  learned = ({f'diff_stride_{i}': pair for i, pair in
              enumerate(_strides(init, final))}
             if method == 'diffstride' else {})
  metrics = {'dataset': dataset, 'test_top1': top1, 'seed': seed,
             'learned_strides': learned, 'steps_per_epoch': 10}
  if with_fields:
    metrics.update({
        'method': method, 'stride_init': list(init),
        'complexity_weight': weight, 'complexity_form': 'paper',
        'complexity': {'paper': paper, 'conv_mmacs': mmacs,
                       'strides': _strides(init, final)}})
  with open(os.path.join(path, 'metrics.json'), 'w') as f:
    json.dump(metrics, f)
  pooling = {'diffstride': '@DiffStride', 'strided_conv': 'None',
             'spectral_pooling': '@FixedSpectralPooling'}[method]
  with open(os.path.join(path, 'config.gin'), 'w') as f:
    f.write(f'Resnet.pooling_cls = {pooling}\nSTRIDE_INIT = '
            f'({", ".join(str(v) for v in init)})\n{config_extra}')
  if learned:
    with open(os.path.join(path, 'strides.jsonl'), 'w') as f:
      for epoch in range(1, epochs + 1):
        value = init[0] + (final - init[0]) * epoch / epochs
        f.write(json.dumps({'epoch': epoch, 'step': 10 * epoch, 'strides': {
            k: [value, value] for k in learned}}) + '\n')
  return path


@pytest.fixture
def runs(tmp_path):
  dirs = []
  for seed, (sc, sp, ds) in enumerate([(0.60, 0.80, 0.90), (0.70, 0.84, 0.94)]):
    dirs.append(_write_run(tmp_path, f'sc{seed}', method='strided_conv',
                           seed=seed, top1=sc, paper=0.1, mmacs=3.0))
    dirs.append(_write_run(tmp_path, f'sp{seed}', method='spectral_pooling',
                           seed=seed, top1=sp))
    dirs.append(_write_run(tmp_path, f'ds{seed}', seed=seed, top1=ds))
    dirs.append(_write_run(tmp_path, f'sc222_{seed}', method='strided_conv',
                           init=(2, 2, 2), seed=seed, top1=0.75, paper=0.3,
                           mmacs=6.0))
    for weight, acc in ((1.0, 0.85), (10.0, 0.7)):
      dirs.append(_write_run(tmp_path, f'lam{weight}_{seed}', seed=seed,
                             weight=weight, top1=acc + 0.01 * seed,
                             paper=0.4 / weight, mmacs=8.0 / weight,
                             final=2.5 + weight / 10))
  return dirs


def _row(table, first_cell):
  for line in table.splitlines():
    if line.startswith(f'| {first_cell} |'):
      return [c.strip() for c in line.strip('|').split('|')]
  raise AssertionError(f'no row {first_cell!r} in\n{table}')


def test_accuracy_table_mean_std_over_seeds(runs):
  table = report.accuracy_table([report.load_run(d) for d in runs])
  header = table.splitlines()[2]
  assert header.index('Strided conv.') < header.index('Spectral pooling') < (
      header.index('DiffStride'))
  row = _row(table, '(3, 2, 3)')
  # 60 / 70 -> 65.0 ± 7.1 (sample std); 80 / 84 -> 82.0 ± 2.8; 90 / 94.
  assert row[1:] == ['65.0 ± 7.1 (n=2)', '82.0 ± 2.8 (n=2)',
                     '92.0 ± 2.8 (n=2)']
  # Strided conv. also ran at (2, 2, 2): its own row; the others have none.
  assert _row(table, '(2, 2, 2)')[1:] == ['75.0 ± 0.0 (n=2)', '—', '—']
  # The lambda > 0 runs are not in the accuracy table; no mean row with a
  # single initialisation common to all methods.
  assert 'n=4' not in table
  assert 'mean over' not in table


def test_accuracy_table_shows_published_numbers_for_cifar(tmp_path):
  dirs = [_write_run(tmp_path, f'c{m}', dataset='cifar10', method=m,
                     init=(2, 2, 2), top1=0.9)
          for m in ('strided_conv', 'spectral_pooling', 'diffstride')]
  dirs.append(_write_run(tmp_path, 'c100', dataset='cifar100',
                         method='diffstride', init=(3, 2, 3), top1=0.75))
  table = report.accuracy_table([report.load_run(d) for d in dirs])
  cifar10, cifar100 = table.split('**cifar100**')
  assert _row(cifar10, '(2, 2, 2)')[1:] == [
      '90.0 (n=1)', '91.4 ± 0.2*', '91.06†',
      '90.0 (n=1)', '92.4 ± 0.1*', '93.49†',
      '90.0 (n=1)', '92.5 ± 0.1*', '94.20†']
  # Every initialisation of the paper has a row, run or not.
  assert _row(cifar10, '(3, 2, 3)')[1:] == [
      '—', '82.0 ± 0.6*', '89.21 ± 0.27†', '—', '89.2 ± 0.2*',
      '92.00 ± 0.08†', '—', '92.3 ± 0.1*', '94.19 ± 0.15†']
  assert _row(cifar10, '(1, 3, 1)')[1:] == [
      '—', '90.0 ± 0.4*', '', '—', '91.1 ± 0.1*', '', '—', '92.4 ± 0.1*', '']
  assert _row(cifar10, 'mean over 1 inits.')[1:] == [
      '90.0', '87.7*', '', '90.0', '91.1*', '', '90.0', '92.4*', '']
  assert _row(cifar100, '(3, 2, 3)')[1:] == [
      '75.0 (n=1)', '73.6 ± 0.4*', '76.09 ± 0.06†']
  assert _row(cifar100, '(2, 2, 2)')[1:] == ['—', '73.4 ± 0.5*',
                                             '76.08 ± 0.23†']
  assert 'as quoted by a secondary source' in table


def test_complexity_table_has_the_sweep_and_the_references(runs):
  table = report.complexity_table([report.load_run(d) for d in runs])
  lines = [l for l in table.splitlines() if l.startswith('| synthetic')]
  assert len(lines) == 3 + 2  # Lambda 0, 1, 10; strided conv at 2 inits.
  zero = [c.strip() for c in lines[0].strip('|').split('|')]
  assert zero[2] == '0' and zero[3] == '92.0 ± 2.8 (n=2)'
  ten = [c.strip() for c in lines[2].strip('|').split('|')]
  assert ten[2] == '10' and ten[3] == '70.5 ± 0.7 (n=2)'
  assert ten[4] == '0.040' and ten[5] == '0.8'
  assert 'strided conv. (2, 2, 2)' in lines[3]
  assert 'strided conv. (3, 2, 3)' in lines[4]


def test_runs_without_the_new_fields_fall_back_to_config_gin(tmp_path):
  path = _write_run(tmp_path, 'old', method='spectral_pooling',
                    init=(1, 3, 1), with_fields=False,
                    config_extra='train.complexity_weight = 0.5\n')
  run = report.load_run(path)
  assert (run.method, run.init, run.weight) == ('spectral_pooling',
                                                 '(1, 3, 1)', 0.5)


def test_figures_are_written(runs, tmp_path):
  loaded = [report.load_run(d) for d in runs]
  for fn in (report.plot_trajectories, report.plot_final_strides,
             report.plot_accuracy_vs_complexity):
    path = str(tmp_path / f'{fn.__name__}.png')
    assert fn(loaded, path)
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 10_000
  # Nothing to plot: no DiffStride runs.
  only_sc = [r for r in loaded if r.method == 'strided_conv']
  assert not report.plot_trajectories(only_sc, str(tmp_path / 'none.png'))
  assert not report.plot_accuracy_vs_complexity(only_sc,
                                                str(tmp_path / 'none.png'))


def test_trajectories_come_from_tensorboard_when_logged(tmp_path):
  path = _write_run(tmp_path, 'tb')
  writer = tf.summary.create_file_writer(os.path.join(path, 'tensorboard',
                                                      'train'))
  with writer.as_default():
    for step in (0, 5, 10, 20):
      tf.summary.scalar('strides/diff_stride_0/height', 3.0 + step / 100,
                        step=step)
      tf.summary.scalar('strides/diff_stride_0/width', 2.0, step=step)
  writer.flush()
  epochs, per_layer = report._trajectory(report.load_run(path))  # pylint: disable=protected-access
  assert epochs == [0.0, 0.5, 1.0, 2.0]  # steps_per_epoch = 10.
  assert per_layer['diff_stride_0'][-1] == pytest.approx([3.2, 2.0])


def test_cost_and_export_tables(tmp_path):
  rows = [{'variant': v, 'ms_per_step': t, 'time_ratio': t / 100,
           'peak_rss_mb': m, 'memory_ratio': m / 1000,
           'step_increase_mb': 10, 'memory_method': 'VmHWM'}
          for v, t, m in (('strided_conv', 100, 1000),
                          ('spectral_pooling', 150, 1100),
                          ('diffstride', 400, 1300))]
  table = report.cost_table({'what': 'ResNet-18', 'tensorflow': '2.21',
                             'cpus': 2, 'steps': 3, 'rows': rows})
  assert _row(table, 'DiffStride')[1:3] == ['400', '4.00x']
  path = _write_run(tmp_path, 'exp')
  os.makedirs(os.path.join(path, 'export'))
  entry = {'before_finetune': {'test_top1': 0.5},
           'after_finetune': {'test_top1': 0.8}, 'conv_mmacs': 4.0}
  with open(os.path.join(path, 'export', 'export.json'), 'w') as f:
    json.dump({'finetune_epochs': 1,
               'source': {'test_top1': 0.9, 'conv_mmacs': 9.0},
               'exports': {'strided_conv': entry}}, f)
  table = report.export_table([report.load_run(path)])
  row = [l for l in table.splitlines() if 'rounded' in l][0]
  assert '50.0 (n=1)' in row and '80.0 (n=1) (1 ep.)' in row


def test_cli_writes_the_report(runs, tmp_path):
  out = str(tmp_path / 'out')
  missing = str(tmp_path / 'unfinished')
  os.makedirs(missing)
  result = subprocess.run(
      [sys.executable, '-m', 'diffstride.experiments.report', *runs, missing, '--out',
       out], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'skipping' in result.stderr
  for name in ('report.md', 'accuracy.md', 'complexity.md',
               'stride_trajectories.png', 'final_strides.png',
               'accuracy_vs_complexity.png'):
    assert os.path.exists(os.path.join(out, name)), name
  text = open(os.path.join(out, 'report.md')).read()
  assert '![Accuracy vs complexity](accuracy_vs_complexity.png)' in text
  assert '92.0 ± 2.8 (n=2)' in text


def test_no_finished_run_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='No finished run'):
    report.write_report([str(tmp_path)], str(tmp_path / 'out'))


def test_comparison_table_and_figure(runs, tmp_path):
  loaded = [report.load_run(d) for d in runs]
  for r, (circular, crop_pad) in zip(loaded, ((0.9, 0.95), (0.8, 0.85)) * 99):
    r.metrics['shift_consistency'] = {'circular': circular,
                                      'crop_pad': crop_pad, 'max_shift': 4,
                                      'unit': 'pixels'}
  from diffstride.experiments import comparison  # pylint: disable=g-import-not-at-top
  table = comparison.comparison_table(loaded)
  rows = [[c.strip() for c in l.strip('|').split('|')]
          for l in table.splitlines() if l.startswith('| ')][1:]
  # Registry order, then lambda, then init: strided conv at (2, 2, 2) and
  # (3, 2, 3), spectral pooling, DiffStride at lambda 0, 1, 10.
  assert [(r[0], r[1], r[2]) for r in rows] == [
      ('Strided conv.', '(2, 2, 2)', '0'), ('Strided conv.', '(3, 2, 3)', '0'),
      ('Spectral pooling', '(3, 2, 3)', '0'), ('DiffStride', '(3, 2, 3)', '0'),
      ('DiffStride', '(3, 2, 3)', '1'), ('DiffStride', '(3, 2, 3)', '10')]
  assert rows[3][3] == '92.0 ± 2.8 (n=2)' and rows[3][6] == '10.0 ± 0.0 (n=2)'
  assert rows[0][7] == '(fixed)' and rows[3][7].startswith('(2.50, 2.50)')
  assert rows[5][6] == '0.8 ± 0.0 (n=2)'
  assert 'up to 4 pixels' in table
  path = str(tmp_path / 'methods.png')
  assert comparison.plot_methods_vs_compute(loaded, path)
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  # One method only: nothing to compare.
  only_ds = [r for r in loaded if r.method == 'diffstride']
  assert comparison.comparison_table(only_ds) == ''
  assert not comparison.plot_methods_vs_compute(only_ds, path)


def test_penalty_variants_get_their_own_rows(runs, tmp_path):
  """Runs that differ by the penalty's form or by the stem layer are not
  averaged with the others: their own rows in the comparison and the
  complexity sweep, labelled with what differs."""
  for seed in (0, 1):
    path = _write_run(tmp_path, f'nostem{seed}', seed=seed, weight=1.0,
                      top1=0.5, config_extra='Resnet.stem_pooling = False\n')
    metrics_path = os.path.join(path, 'metrics.json')
    metrics = json.load(open(metrics_path))
    metrics['complexity_form'] = 'compute'
    json.dump(metrics, open(metrics_path, 'w'))
    runs.append(path)
  loaded = [report.load_run(d) for d in runs]
  from diffstride.experiments import comparison  # pylint: disable=g-import-not-at-top
  rows = [[c.strip() for c in l.strip('|').split('|')]
          for l in comparison.comparison_table(loaded).splitlines()
          if l.startswith('| ')][1:]
  by_name = {(r[0], r[2]): r for r in rows}
  assert by_name[('DiffStride', '1')][3] == '85.5 ± 0.7 (n=2)'
  assert by_name[('DiffStride (compute form, no stem layer)', '1')][3] == (
      '50.0 ± 0.0 (n=2)')
  sweep = report.complexity_table(loaded)
  assert _row(sweep, 'synthetic_frequency')  # The table is there.
  assert '| DiffStride from (3, 2, 3) (compute form, no stem layer) | 1 |' \
      in sweep
