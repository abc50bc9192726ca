r"""Stride export: from a trained DiffStride ResNet to a fixed-stride model.

A DiffStride network learns its strides; to deploy it one builds the same
network with fixed downsampling and copies every other weight:

  * 'fixed_spectral': `FixedSpectralPooling` at the learned (fractional)
    strides. Its maps are floor(H / S) (rows rounded down to even), smaller
    than DiffStride's about H / S + 2R: this is the model whose compute the
    learned strides promise, but the layers after each pooling see smaller
    maps than in training.
  * 'fixed_spectral_matched': `FixedSpectralPooling` at the stride that gives
    DiffStride's own output size (S' = H / (h' + 1/2)), so every layer sees
    the map size it was trained at; only the mask's soft ramp of width R
    becomes a hard box. With a hard DiffStride mask (R -> 0) the two models
    are the same function (`tests/export_test.py`).
  * 'strided_conv': strided convolutions with the learned strides rounded to
    the nearest integer (at least 1), the cheapest to run anywhere.

    from diffstride import export
    fixed = export.export_model(model, 'fixed_spectral', (32, 32))

Command line: evaluate a finished run's model and its three exports on the
run's test set, without and with a short fine-tune (the run's optimizer,
a constant learning rate), and write RUN_DIR/export/export.json plus the
exported .keras models:

    python -m diffstride.export runs/builtin/diffstride/323/seed0 \
        [--finetune_epochs 1] [--finetune_lr 3e-4] [--out DIR]
"""

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import gin
import keras
import numpy as np
import tensorflow as tf

from diffstride import complexity
from diffstride import data
from diffstride import hparams
from diffstride import pooling
from diffstride import resnet

MODES = ('fixed_spectral', 'fixed_spectral_matched', 'strided_conv')


def _pooling_positions(model: resnet.Resnet) -> Dict[int, Any]:
  """{index into model.block_strides: the pooling layer downsampling there}."""
  positions = {}
  block = 0
  for layer in model._stack:  # pylint: disable=protected-access
    if isinstance(layer, resnet.ResnetBlock):
      block += 1
      first = layer.layers[0]
      if first.pooling is not None:
        positions[block] = first.pooling
    elif isinstance(layer, (pooling.DiffStride, pooling.FixedSpectralPooling,
                            pooling.SpatialPooling)):
      positions[0] = layer
  return positions


def effective_strides(layer: pooling.DiffStride,
                      input_size: Tuple[int, int]) -> Tuple[float, float]:
  """The (S_h, S_w) the layer applies on an (H, W) input: its weight raised to
  N / (N - R) (and a shared stride used for both axes), as in its forward."""
  values = [float(v) for v in np.asarray(layer.strides.numpy()).reshape(-1)]
  r = layer.smoothness_factor
  floors = [n / (n - r) for n in input_size]
  if len(values) == 1:
    s = max(values[0], max(floors))
    return s, s
  return max(values[0], floors[0]), max(values[1], floors[1])


def _matched_stride(size_in: int, size_out: int) -> float:
  """A stride at which FixedSpectralPooling outputs `size_out` (float32
  floor(size_in / S) == size_out); at least 1."""
  return max(float(size_in) / (size_out + 0.5), 1.0)


def exported_strides(model: resnet.Resnet, mode: str,
                     input_size: Tuple[int, int]) -> List[Any]:
  """The `strides` argument of the exported Resnet: `model.block_strides`
  with each DiffStride position replaced per `mode` ((S_h, S_w) pairs)."""
  if mode not in MODES:
    raise ValueError(f'Unknown export mode {mode!r}: use one of {MODES}.')
  positions = _pooling_positions(model)
  sizes = {id(layer): (size_in, size_out) for layer, size_in, size_out
           in complexity.downsampling_sizes(model, input_size)}
  strides = list(model.block_strides)
  for index, layer in positions.items():
    if not isinstance(layer, pooling.DiffStride):
      continue
    size_in, size_out = sizes[id(layer)]
    learned = effective_strides(layer, size_in)
    if mode == 'fixed_spectral':
      strides[index] = learned
    elif mode == 'fixed_spectral_matched':
      strides[index] = (_matched_stride(size_in[0], size_out[0]),
                        _matched_stride(size_in[1], size_out[1]))
    else:
      strides[index] = tuple(max(1, int(round(s))) for s in learned)
  return strides


def _non_pooling_weights(model) -> list:
  pooled = set()
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, (pooling.DiffStride, pooling.FixedSpectralPooling)):
      pooled.update(id(w) for w in layer.weights)
  return [w for w in model.weights if id(w) not in pooled]


def copy_weights(source: keras.Model, target: keras.Model):
  """Copies every weight except the pooling layers' strides, in order.

  Raises:
    ValueError: if the two networks' other weights do not match one to one.
  """
  src, dst = _non_pooling_weights(source), _non_pooling_weights(target)
  if len(src) != len(dst) or any(
      tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
    raise ValueError(
        'The exported network does not have the same weights as the source '
        f'({len(src)} vs {len(dst)} tensors, or different shapes).')
  for a, b in zip(src, dst):
    b.assign(a.numpy())


def export_model(model: resnet.Resnet, mode: str,
                 input_size: Tuple[int, int]) -> resnet.Resnet:
  """The fixed-stride deployment of a built DiffStride `resnet.Resnet`.

  Args:
    model: a built `Resnet` with `pooling_cls=DiffStride`.
    mode: 'fixed_spectral', 'fixed_spectral_matched' or 'strided_conv' (see
      the module docstring).
    input_size: (H, W) of the images the model runs on.

  Returns:
    A new, built `Resnet` (same filters, blocks, head and data format) with
    every convolution, batch-norm and dense weight copied. It maps
    [B, H, W, C] images to [B, num_output_classes] logits like the source.
  """
  if not isinstance(model, resnet.Resnet):
    raise ValueError(f'export_model takes a diffstride.resnet.Resnet, got '
                     f'{type(model).__name__}.')
  if model.pooling_cls is not pooling.DiffStride:
    raise ValueError('export_model exports DiffStride networks; this one has '
                     f'pooling_cls={resnet.pooling_cls_name(model.pooling_cls)}'
                     '.')
  config = model.get_config()
  config['strides'] = exported_strides(model, mode, input_size)
  config['pooling_cls'] = (None if mode == 'strided_conv'
                           else 'FixedSpectralPooling')
  config['pooling_kwargs'] = {}
  config['name'] = f'{model.name}_{mode}'
  exported = resnet.Resnet.from_config(config)
  stem = next(l for l in model._stack  # pylint: disable=protected-access
              if isinstance(l, keras.layers.Conv2D))
  exported.build((None,) + tuple(input_size) + (int(stem.kernel.shape[2]),))
  copy_weights(model, exported)
  return exported


# ----------------------------------------------------------------------------
# Command line.

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
  for mode in MODES:
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
                         'diffstride.export RUN_DIR [RUN_DIR ...]')
  import diffstride  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
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
