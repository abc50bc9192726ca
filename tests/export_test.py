"""Stride export: the exported fixed-stride models and where they must agree
with the DiffStride model they come from."""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import complexity
from diffstride import export
from diffstride import pooling
from diffstride import resnet
from diffstride.experiments import training
from diffstride.experiments.data import images as data

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

ROOT = gin_testing.ROOT


def _diffstride_resnet(smoothness_factor=4.0, seed=0):
  keras.utils.set_random_seed(seed)
  model = resnet.Resnet([4, 4, 8, 16], [1, 1, 2, 2], num_output_classes=5,
                        id_only=[0], num_layers=1, kernel_size=3,
                        channels_first=False, pooling_cls=pooling.DiffStride,
                        pooling_kwargs={'smoothness_factor': smoothness_factor})
  model.build((None, 32, 32, 3))
  # Non-trivial batch-norm statistics, so that copying them matters.
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      rng = np.random.default_rng(len(layer.moving_mean.path))
      layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
      layer.moving_variance.assign(
          rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
  return model


def _images(n=3):
  return np.random.default_rng(1).normal(size=(n, 32, 32, 3)).astype(
      np.float32)


def _assign(model, values):
  for layer, value in zip(diffstride.diffstride_layers(model), values):
    layer.strides.assign(value)


# Strides whose thresholds t = N / (2S) are not near integers: with a ramp
# of R = 1e-3 no frequency falls inside it, so DiffStride's mask is a hard box.
FRACTIONAL = [(1.3, 1.1), (2.1, 2.3), (2.7, 1.6)]


def test_size_matched_export_equals_diffstride_with_a_hard_mask():
  model = _diffstride_resnet(smoothness_factor=1e-3)
  _assign(model, FRACTIONAL)
  x = _images()
  expected = model(x, training=False).numpy()
  exported = export.export_model(model, 'fixed_spectral_matched', (32, 32))
  assert exported.pooling_cls is pooling.FixedSpectralPooling
  np.testing.assert_allclose(exported(x, training=False).numpy(), expected,
                             rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # Every layer sees the map size it had in the DiffStride model.
  assert ([out for _, _, out in complexity.downsampling_sizes(model, (32, 32))]
          == [out for _, _, out in
              complexity.downsampling_sizes(exported, (32, 32))])


def test_size_matched_export_differs_with_a_soft_mask():
  """With the default ramp (R = 4) the hard box is a different function: the
  test above is not vacuous."""
  model = _diffstride_resnet(smoothness_factor=4.0)
  _assign(model, FRACTIONAL)
  x = _images()
  expected = model(x, training=False).numpy()
  exported = export.export_model(model, 'fixed_spectral_matched', (32, 32))
  assert np.abs(exported(x, training=False).numpy() - expected).max() > (
      1e-3 * np.abs(expected).max())


def test_learned_stride_export_uses_the_learned_strides():
  model = _diffstride_resnet()
  learned = [(1.3, 1.25), (2.1, 2.3), (2.7, 1.6)]
  _assign(model, learned)
  exported = export.export_model(model, 'fixed_spectral', (32, 32))
  layers = [l for l in exported._flatten_layers()  # pylint: disable=protected-access
            if isinstance(l, pooling.FixedSpectralPooling)]
  np.testing.assert_allclose(
      [l.get_config()['strides'] for l in layers], learned, rtol=1e-6)
  # FixedSpectralPooling sizes: floor(H / S) (rows rounded down to even).
  sizes = [out for _, _, out in
           complexity.downsampling_sizes(exported, (32, 32))]
  assert sizes[0] == (24, 25)  # floor(32 / 1.3) = 24, floor(32 / 1.25) = 25.
  assert sizes[1] == (10, 10)  # floor(24 / 2.1) = 11 -> 10, floor(25 / 2.3).


def test_strides_below_the_minimum_are_exported_as_applied():
  """DiffStride raises a stride below N / (N - R) to it in its forward pass;
  the export uses that value (32 / 28 for the 32-wide stem at R = 4)."""
  model = _diffstride_resnet()
  _assign(model, FRACTIONAL)
  strides = export.exported_strides(model, 'fixed_spectral', (32, 32))
  np.testing.assert_allclose(strides[0], (1.3, 32 / 28), rtol=1e-6)


def _structural_weights(model):
  """{where the weight sits in the network: its value}, for the stem
  convolution and batch norm, every residual layer's convolutions and batch
  norms, and the head, found through the model's structure (not through the
  weight order that `export.copy_weights` follows)."""
  stack = model.stack
  named = {'stem': model.stem_conv,
           'stem_bn': next(l for l in stack if isinstance(
               l, keras.layers.BatchNormalization)),
           'head': next(l for l in stack if isinstance(l, keras.layers.Dense))}
  blocks = [l for l in stack if isinstance(l, resnet.ResnetBlock)]
  for i, block in enumerate(blocks):
    for j, layer in enumerate(block.layers):
      for attr in ('strided_conv', 'bn1', 'unstrided_conv', 'bn2',
                   'shortcut_conv', 'shortcut_bn'):
        if getattr(layer, attr) is not None:
          named[f'block{i}/layer{j}/{attr}'] = getattr(layer, attr)
  return {f'{where}/{w.name}': w.numpy() for where, layer in named.items()
          for w in layer.weights}


def test_all_other_weights_are_copied():
  """Every convolution, batch-norm and dense weight lands in the layer at the
  same place of the exported network. Every weight gets a distinct random
  value first, so that a weight copied into another layer of the same shape
  (the 4 -> 4 identity block's two convolutions, the batch norms' four
  vectors) would show."""
  model = _diffstride_resnet()
  _assign(model, FRACTIONAL)
  rng = np.random.default_rng(7)
  for weight in model.weights:
    if not weight.path.endswith('strides'):
      weight.assign(rng.uniform(0.5, 2.0, size=weight.shape))
  source = _structural_weights(model)
  # Stem conv, stem BN (4), head (2); the identity block (4 -> 4): 2 convs
  # and 2 BNs; the two projecting blocks: 3 convs and 3 BNs each.
  assert len(source) == 1 + 4 + 2 + (2 + 2 * 4) + 2 * (3 + 3 * 4)
  for mode in export.MODES:
    exported = export.export_model(model, mode, (32, 32))
    target = _structural_weights(exported)
    assert sorted(target) == sorted(source), mode
    for where, value in source.items():
      np.testing.assert_array_equal(target[where], value,
                                    err_msg=f'{mode}: {where}')
    # The exported pooling layers keep their own (fixed) strides.
    for layer in exported.downsampling_positions().values():
      assert not isinstance(layer, pooling.DiffStride)


def test_strided_conv_export_rounds_the_strides():
  model = _diffstride_resnet()
  _assign(model, [(1.2, 1.6), (2.4, 2.6), (3.49, 1.51)])
  exported = export.export_model(model, 'strided_conv', (32, 32))
  assert exported.pooling_cls is None
  assert exported.block_strides == [(1, 2), 1, (2, 3), (3, 2)]


def test_strided_conv_export_equals_diffstride_at_unit_strides():
  """At its minimum stride a hard-mask DiffStride keeps every frequency with
  weight 1 (the identity), and the strides round to 1: the exported
  unstrided network computes the same function."""
  model = _diffstride_resnet(smoothness_factor=1e-3)
  _assign(model, [(1.0, 1.0)] * 3)
  x = _images()
  expected = model(x, training=False).numpy()
  exported = export.export_model(model, 'strided_conv', (32, 32))
  assert exported.block_strides == [(1, 1), 1, (1, 1), (1, 1)]
  np.testing.assert_allclose(exported(x, training=False).numpy(), expected,
                             rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_exported_models_save_and_load(tmp_path):
  model = _diffstride_resnet()
  _assign(model, FRACTIONAL)
  x = _images(2)
  for mode in export.MODES:
    exported = export.export_model(model, mode, (32, 32))
    path = os.path.join(str(tmp_path), f'{mode}.keras')
    exported.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), exported(x).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_export_rejects_other_networks():
  model = resnet.Resnet([4, 8], [1, 2], num_output_classes=2, num_layers=1,
                        kernel_size=3, channels_first=False)
  model.build((None, 32, 32, 3))
  with pytest.raises(ValueError, match='DiffStride'):
    export.export_model(model, 'fixed_spectral', (32, 32))
  with pytest.raises(ValueError, match='mode'):
    export.exported_strides(_diffstride_resnet(), 'rounded', (32, 32))


@pytest.mark.slow
def test_export_cli_on_a_finished_run(tmp_path):
  run_dir = str(tmp_path / 'run')
  # The quick start's small ResNet: what is tested is the command, not the
  # network (tracing ResNet-18 once per export mode doubles the time).
  gin_testing.parse(
      'quickstart.gin',
      ['EPOCHS = 1', 'train.max_steps_per_epoch = 2',
       'train.max_eval_steps = 1', 'train.verbose = 0',
       'train.shift_consistency_max_shift = 0',
       'image_datasets.max_train_examples = 128',
       'image_datasets.max_test_examples = 64'])
  training.train(workdir=run_dir)
  gin.clear_config()
  result = subprocess.run(
      [sys.executable, '-m', 'diffstride.experiments.export_run', run_dir,
       '--finetune_epochs=1', '--max_finetune_steps=2', '--max_eval_steps=1'],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'fixed_spectral_matched' in result.stdout
  report = json.load(open(os.path.join(run_dir, 'export', 'export.json')))
  assert set(report['exports']) == set(export.MODES)
  # The test batch the command evaluated (--max_eval_steps=1), rebuilt from
  # the run's config and seed as the command does.
  gin.parse_config_file(os.path.join(run_dir, 'config.gin'))
  images, labels = next(iter(data.image_datasets(seed=0)[1]))
  gin.clear_config()
  labels = np.argmax(labels.numpy(), axis=-1)
  for mode in export.MODES:
    entry = report['exports'][mode]
    assert entry['conv_mmacs'] > 0
    loaded = keras.models.load_model(
        os.path.join(run_dir, 'export', f'{mode}.keras'))
    # The saved model is the fine-tuned one: its top-1 on that batch is the
    # one reported, to the example.
    logits = np.asarray(loaded(images, training=False))
    top1 = float(np.mean(np.argmax(logits, axis=-1) == labels))
    assert entry['after_finetune']['test_top1'] == pytest.approx(top1,
                                                                 abs=1e-6)
    count = len(labels) * entry['before_finetune']['test_top1']
    assert abs(count - round(count)) < 1e-4  # A fraction of the batch.
