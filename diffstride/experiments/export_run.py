r"""Command line: export a finished training run and measure the exports.

Evaluates a finished run's model and its three exports (see
`diffstride.export`) on the run's test set, without and with a short
fine-tune (the run's optimizer, a constant learning rate), and writes
RUN_DIR/export/export.json plus the exported .keras models:

    python -m diffstride.experiments.export_run runs/builtin/diffstride/323/seed0 \\
        [--finetune_epochs 1] [--finetune_lr 3e-4] [--out DIR]
"""

import json
import os
import time
from typing import Any, Dict, Optional

from absl import app
from absl import flags
import gin
import keras

from diffstride import complexity
from diffstride.export import export_model
from diffstride.export import modes_for
from diffstride.experiments import hparams
from diffstride.experiments.data import images as data


flags.DEFINE_integer('finetune_epochs', 1, 'Epochs of fine-tuning per export '
                     '(0: evaluate only).')
flags.DEFINE_float('finetune_lr', None, 'Constant fine-tuning learning rate '
                   '(default: a tenth of the run\'s peak learning rate).')
flags.DEFINE_string('out', None, 'Output directory (default RUN_DIR/export).')
flags.DEFINE_integer('max_finetune_steps', None, 'Cut fine-tuning epochs '
                     'short (smoke tests).')
flags.DEFINE_integer('max_eval_steps', None, 'Evaluate on that many test '
                     'batches only (smoke tests).')


def _peak_learning_rate() -> float:
  def query(name, default):
    try:
      return gin.query_parameter(name)
    except ValueError:
      return default
  schedule = query('learning_rate.schedule', 'piecewise')
  if schedule == 'piecewise':
    return float(max(query('learning_rate.values', (0.01, 0.1, 0.01, 0.001))))
  return float(query('learning_rate.base', 0.1))


def _compile(model, label_smoothing: float, lr: float):
  model.compile(
      optimizer=hparams.optimizer(lr),
      loss=keras.losses.CategoricalCrossentropy(
          from_logits=True, label_smoothing=label_smoothing),
      metrics=[keras.metrics.CategoricalAccuracy(name='top1')])


def _evaluate(model, test_ds) -> Dict[str, float]:
  results = model.evaluate(test_ds, return_dict=True, verbose=0)
  return {'test_top1': float(results['top1']),
          'test_loss': float(results['loss'])}


def export_run(run_dir: str, out_dir: Optional[str] = None,
               finetune_epochs: int = 1, finetune_lr: Optional[float] = None,
               max_finetune_steps: Optional[int] = None,
               max_eval_steps: Optional[int] = None) -> Dict[str, Any]:
  """Exports a finished run's model in every mode and measures accuracy.

  Reads RUN_DIR/config.gin (the data pipeline and optimizer of the run),
  RUN_DIR/metrics.json (the seed) and RUN_DIR/model.keras. Writes
  OUT/export.json and OUT/<mode>.keras (the fine-tuned model when
  `finetune_epochs` > 0).

  Returns:
    The dictionary written to export.json: for the source model and each
    mode, test top-1 and loss before (and after) fine-tuning, the strides,
    and the convolution MMACs per example.
  """
  start = time.time()
  out_dir = out_dir or os.path.join(run_dir, 'export')
  os.makedirs(out_dir, exist_ok=True)
  metrics = json.load(open(os.path.join(run_dir, 'metrics.json')))
  seed = int(metrics.get('seed', 0))
  gin.clear_config()
  gin.parse_config_file(os.path.join(run_dir, 'config.gin'),
                        skip_unknown=True)
  train_ds, test_ds, info = data.image_datasets(seed=seed)
  if max_finetune_steps:
    train_ds = train_ds.take(max_finetune_steps)
  if max_eval_steps:
    test_ds = test_ds.take(max_eval_steps)
  try:
    label_smoothing = float(gin.query_parameter('train.label_smoothing'))
  except ValueError:
    label_smoothing = 0.0
  lr = finetune_lr if finetune_lr is not None else 0.1 * _peak_learning_rate()
  input_size = tuple(info.image_shape[:2])
  source = keras.models.load_model(os.path.join(run_dir, 'model.keras'),
                                   compile=False)
  _compile(source, label_smoothing, lr)
  result = {
      'run_dir': os.path.abspath(run_dir),
      'dataset': info.name,
      'finetune_epochs': finetune_epochs,
      'finetune_learning_rate': lr,
      'source': {**_evaluate(source, test_ds),
                 'strides': complexity.complexity_values(
                     source, input_size).get('strides'),
                 'conv_mmacs': complexity.conv_macs(source, input_size) / 1e6},
      'exports': {},
  }
  for mode in modes_for(source):
    keras.utils.set_random_seed(seed)
    exported = export_model(source, mode, input_size)
    _compile(exported, label_smoothing, lr)
    entry = {'strides': [list(s) if isinstance(s, (list, tuple)) else s
                         for s in exported.block_strides],
             'conv_mmacs': complexity.conv_macs(exported, input_size) / 1e6,
             'before_finetune': _evaluate(exported, test_ds)}
    if finetune_epochs > 0:
      exported.fit(train_ds, epochs=finetune_epochs, verbose=0)
      entry['after_finetune'] = _evaluate(exported, test_ds)
    exported.save(os.path.join(out_dir, f'{mode}.keras'))
    result['exports'][mode] = entry
  result['wall_time_seconds'] = time.time() - start
  with open(os.path.join(out_dir, 'export.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Give one or more run directories: python -m '
                         'diffstride.experiments.export_run RUN_DIR [RUN_DIR ...]')
  import diffstride.experiments  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  f = flags.FLAGS
  if f.out and len(argv) > 2:
    raise app.UsageError('--out works with a single run directory.')
  for run_dir in argv[1:]:
    result = export_run(run_dir, f.out, f.finetune_epochs, f.finetune_lr,
                        f.max_finetune_steps, f.max_eval_steps)
    src = result['source']
    print(f"{run_dir}: DiffStride {100 * src['test_top1']:.1f}% "
          f"({src['conv_mmacs']:.1f} MMACs)")
    for mode, entry in result['exports'].items():
      after = entry.get('after_finetune', {}).get('test_top1')
      after_text = f', fine-tuned {100 * after:.1f}%' if after is not None else ''
      print(f"  {mode:>24}: {100 * entry['before_finetune']['test_top1']:.1f}%"
            f"{after_text} ({entry['conv_mmacs']:.1f} MMACs, strides "
            f"{entry['strides']})")
  return 0


if __name__ == '__main__':
  app.run(main)
