"""The complexity regulariser: values by hand, gradients, training, logging."""

import glob
import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import complexity
from diffstride import pooling
from diffstride import resnet
from diffstride import stages as stages_lib
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order
import subprocess_testing  # pylint: disable=g-bad-import-order

ROOT = gin_testing.ROOT
GIN_DIR = gin_testing.GIN_DIR
# Stem, stage 1, stage 2 strides (height, width) set by hand.
STRIDES = [(1.2, 1.5), (2.0, 3.0), (2.5, 1.5)]


def _small_resnet(pooling_cls=pooling.DiffStride, strides=(1, 2, 2)):
  """Stem conv 3->4, then two projecting stages 4->8 and 8->16 (one residual
  layer each), 3x3 kernels, on 32x32x3 images."""
  model = resnet.Resnet([4, 8, 16], list(strides), num_output_classes=3,
                        num_layers=1, kernel_size=3, channels_first=False,
                        pooling_cls=pooling_cls)
  model.build((None, 32, 32, 3))
  return model


def _set_strides(model, values=STRIDES):
  layers = diffstride.diffstride_layers(model)
  assert len(layers) == len(values)
  for layer, value in zip(layers, values):
    layer.strides.assign(value)
  return layers


def _relative_sizes(values=STRIDES):
  sizes, size = [], 1.0
  for s_h, s_w in values:
    size /= s_h * s_w
    sizes.append(size)
  return sizes


def test_paper_form_matches_hand_computation():
  model = _small_resnet()
  _set_strides(model)
  # 1 / (1.2 * 1.5) + 1 / (1.8 * 6) + 1 / (10.8 * 3.75)
  expected = 1 / 1.8 + 1 / 10.8 + 1 / 40.5
  assert float(complexity.complexity_penalty(model, 'paper')) == (
      pytest.approx(expected, rel=1e-6))


def test_cost_weighted_forms_match_hand_computation():
  model = _small_resnet()
  _set_strides(model)
  # Convolutions by the resolution they run at. Stage 1 (after the stem's
  # pooling): the first stage's 3x3 4->8 and 1x1 4->8 shortcut (they run
  # before that stage's pooling). Stage 2: its 3x3 8->8, then the second
  # stage's 3x3 8->16 and 1x1 8->16. Stage 3: the 3x3 16->16.
  compute = [9 * 4 * 8 + 4 * 8, 9 * 8 * 8 + 9 * 8 * 16 + 8 * 16, 9 * 16 * 16]
  memory = [8 + 8, 8 + 16 + 16, 16]
  stages = complexity.network_stages(model)
  assert [s.compute for s in stages[1:]] == compute
  assert [s.memory for s in stages[1:]] == memory
  assert stages[0].compute == 9 * 3 * 4  # The stem conv, at the input size.
  sizes = _relative_sizes()
  for form, costs in (('compute', compute), ('memory', memory)):
    expected = 3 * sum(c * r for c, r in zip(costs, sizes)) / sum(costs)
    assert float(complexity.complexity_penalty(model, form)) == (
        pytest.approx(expected, rel=1e-6)), form


def test_equal_costs_give_the_paper_form():
  strides = [np.array(s, np.float32) for s in STRIDES]  # Any tensor-like.
  paper = complexity.penalty_from_strides(strides)
  weighted = complexity.penalty_from_strides(strides, [7.0, 7.0, 7.0])
  assert float(weighted) == pytest.approx(float(paper), rel=1e-6)
  assert float(paper) == pytest.approx(sum(_relative_sizes()), rel=1e-6)


def test_stage_accounting_is_importable_from_complexity_too():
  """`diffstride.stages` holds the stage and cost accounting; the harness
  and older code read it as `complexity.*`."""
  for name in ('Stage', 'network_stages', 'is_downsampling',
               'downsampling_sizes', 'conv_macs'):
    assert getattr(complexity, name) is getattr(stages_lib, name), name


def test_penalty_is_a_float32_tensor_of_the_backend():
  model = _small_resnet()
  penalty = complexity.complexity_penalty(model)
  assert keras.ops.is_tensor(penalty)
  assert keras.backend.standardize_dtype(penalty.dtype) == 'float32'
  assert tuple(penalty.shape) == ()
  assert float(complexity.penalty_from_strides([])) == 0.0


def test_shared_stride_counts_for_both_axes():
  layer = pooling.DiffStride(strides=(2.0, 2.0), shared_stride=True,
                             data_format='channels_last')
  layer.build((None, 16, 16, 4))
  layer.strides.assign([3.0])
  np.testing.assert_allclose(complexity.stage_strides(layer).numpy(),
                             [3.0, 3.0])


@pytest.mark.parametrize('form', complexity.FORMS)
def test_gradient_pushes_every_stride_up(form):
  model = _small_resnet()
  layers = _set_strides(model)
  variables = [layer.strides for layer in layers]
  with tf.GradientTape() as tape:
    penalty = complexity.complexity_penalty(model, form)
  grads = tape.gradient(penalty, [v.value for v in variables])
  for grad in grads:
    assert grad is not None
    assert np.all(grad.numpy() < 0), grads  # Descent raises the stride.
  before = [v.numpy().copy() for v in variables]
  optimizer = keras.optimizers.SGD(0.1)
  for _ in range(3):
    with tf.GradientTape() as tape:
      penalty = complexity.complexity_penalty(model, form)
    optimizer.apply_gradients(zip(
        tape.gradient(penalty, [v.value for v in variables]), variables))
  for b, v in zip(before, variables):
    assert np.all(v.numpy() > b)


def test_strided_conv_and_spectral_networks_have_the_same_stages():
  """The three methods at the same strides have the same paper-form value,
  so strided-conv networks can be placed on the same axis."""
  values = []
  for cls in (None, pooling.FixedSpectralPooling, pooling.DiffStride):
    model = _small_resnet(cls, strides=(2, 2, 3))
    if cls is pooling.DiffStride:
      _set_strides(model, [(2, 2), (2, 2), (3, 3)])
    values.append(float(complexity.complexity_penalty(model)))
  expected = 1 / 4 + 1 / 16 + 1 / 144
  np.testing.assert_allclose(values, [expected] * 3, rtol=1e-6)


def test_conv_macs_uses_the_real_map_sizes():
  model = _small_resnet(None, strides=(1, 2, 2))
  # Strided conv: stem 32x32, stage 1 at 16x16, stage 2 at 8x8.
  expected = (9 * 3 * 4 * 32 * 32 + (9 * 4 * 8 + 4 * 8 + 9 * 8 * 8) * 16 * 16
              + (9 * 8 * 16 + 8 * 16 + 9 * 16 * 16) * 8 * 8)
  assert complexity.conv_macs(model, (32, 32)) == expected
  model = _small_resnet()
  sizes = [out for _, _, out in complexity.downsampling_sizes(model, (32, 32))]
  assert sizes[1] == pooling.diffstride_output_size(32, 32, (2.0, 2.0))
  expected = (9 * 3 * 4 * 32 * 32
              + (9 * 4 * 8 + 4 * 8) * sizes[0][0] * sizes[0][1]
              + (9 * 8 * 8 + 9 * 8 * 16 + 8 * 16) * sizes[1][0] * sizes[1][1]
              + 9 * 16 * 16 * sizes[2][0] * sizes[2][1])
  assert complexity.conv_macs(model, (32, 32)) == expected


def test_regularizer_adds_lambda_times_penalty_to_the_model_losses():
  model = _small_resnet()
  _set_strides(model)
  before = float(sum(model.losses))  # The L2 weight decay.
  regularizer = complexity.attach_regularizer(model, 0.5, 'compute')
  after = float(sum(model.losses))
  penalty = float(complexity.complexity_penalty(model, 'compute'))
  assert after - before == pytest.approx(0.5 * penalty, rel=1e-5)
  config = regularizer.get_config()
  assert config == {'weight': 0.5, 'form': 'compute'}
  assert complexity.ComplexityRegularizer.from_config(config).weight == 0.5


def test_regularizer_needs_a_learnable_stride():
  with pytest.raises(ValueError, match='DiffStride'):
    complexity.attach_regularizer(_small_resnet(None), 0.1)
  with pytest.raises(ValueError, match='form'):
    complexity.ComplexityRegularizer(0.1, 'flops')


def test_training_step_with_penalty_raises_strides_and_gradients_flow():
  """A real compiled train step: with a large lambda every stride grows."""
  keras.utils.set_random_seed(0)
  model = _small_resnet()
  complexity.attach_regularizer(model, 100.0)
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  layers = diffstride.diffstride_layers(model)
  before = [layer.strides.numpy().copy() for layer in layers]
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  model.fit(x, np.array([0, 1, 2, 0]), batch_size=4, epochs=2, verbose=0)
  for b, layer in zip(before, layers):
    assert np.all(layer.strides.numpy() > b + 1e-3), (b, layer.strides)




def test_train_logs_the_penalty_to_tensorboard_and_metrics(tmp_path):
  gin_testing.parse('complexity/builtin.gin', [
      'LAMBDA = 2.0', 'EPOCHS = 1', 'train.max_steps_per_epoch = 2',
      'train.max_eval_steps = 1', 'train.verbose = 0',
      'train.shift_consistency_max_shift = 0',
      'image_datasets.max_train_examples = 128',
      'image_datasets.max_test_examples = 64'])
  metrics = training.train(workdir=str(tmp_path))
  on_disk = json.load(open(os.path.join(str(tmp_path), 'metrics.json')))
  assert on_disk['complexity_weight'] == 2.0
  assert on_disk['method'] == 'diffstride'
  assert on_disk['stride_init'] == [2, 2, 2]
  values = on_disk['complexity']
  assert values['weighted_penalty'] == pytest.approx(2.0 * values['paper'])
  assert values['num_downsampling'] == 4
  assert values['conv_mmacs'] > 0
  assert metrics['complexity'] == values
  record = json.loads(open(os.path.join(
      str(tmp_path), 'strides.jsonl')).read().splitlines()[-1])
  assert record['complexity']['paper'] == pytest.approx(values['paper'])
  tags = set()
  for path in glob.glob(os.path.join(str(tmp_path), 'tensorboard', 'train',
                                     'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {'complexity/paper', 'complexity/compute', 'complexity/memory',
          'complexity/weighted_penalty', 'complexity/conv_mmacs'} <= tags
  # The saved model loads (the regulariser is not part of its config).
  loaded = keras.models.load_model(os.path.join(str(tmp_path), 'model.keras'))
  assert len(diffstride.diffstride_layers(loaded)) == 4


def test_complexity_configs_parse():
  for name in ('builtin', 'cifar10', 'cifar100', 'imagenet'):
    gin_testing.parse(f'complexity/{name}.gin')
    assert gin.query_parameter('%LAMBDA') > 0
    assert 'train.complexity_weight = %LAMBDA' in gin.config_str()


_MIRRORED_SCRIPT = '''
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import diffstride
from diffstride import complexity, pooling, resnet
keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
  model = resnet.Resnet([4, 8, 16], [1, 2, 2], num_output_classes=3,
                        num_layers=1, kernel_size=3, channels_first=False,
                        pooling_cls=pooling.DiffStride)
  model.build((None, 32, 32, 3))
  complexity.attach_regularizer(model, 100.0)
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
layers = diffstride.diffstride_layers(model)
before = [l.strides.numpy().tolist() for l in layers]
penalty_before = float(complexity.complexity_penalty(model))
x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype('float32')
history = model.fit(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), batch_size=8,
                    epochs=2, verbose=0)
print('RESULT ' + json.dumps({
    'replicas': strategy.num_replicas_in_sync,
    'before': before, 'after': [l.strides.numpy().tolist() for l in layers],
    'loss': history.history['loss'],
    'penalty_before': penalty_before,
    'penalty': float(complexity.complexity_penalty(model))}))
'''


@pytest.mark.slow
def test_penalty_trains_under_mirrored_strategy():
  """Two replicas: the penalty enters each replica's loss once (Keras scales
  the loss by 1 / replicas and sums the gradients), the strides grow."""
  out = subprocess_testing.run_script(_MIRRORED_SCRIPT)
  assert out['replicas'] == 2
  assert all(np.isfinite(out['loss']))
  for b, a in zip(out['before'], out['after']):
    assert np.all(np.array(a) > np.array(b) + 1e-3), (b, a)
  # The logged loss includes 100 * penalty once (plus cross-entropy and L2,
  # a few units here): not once per replica.
  assert 100 * out['penalty'] < out['loss'][-1]
  assert out['loss'][-1] < 100 * out['penalty_before'] + 10
