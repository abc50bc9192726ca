"""Tests of diffstride.resnet under Keras 3.

Forward passes run channels_last: TensorFlow has no NCHW Conv2D kernel on CPU.
"""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride
import diffstride.experiments  # Registers the layers with gin (the harness).
from diffstride import pooling
from diffstride import resnet

SHAPE = (2, 32, 32, 3)
NUM_CLASSES = 10
POOLINGS = [None, pooling.FixedSpectralPooling, pooling.DiffStride,
            pooling.SpatialPooling]


def _images(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _labels() -> np.ndarray:
  return np.array([1, 7], dtype=np.int32)


def _diffstride_layers(model):
  """The distinct DiffStride layers of `model`, in tracking order."""
  return [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
          if isinstance(layer, pooling.DiffStride)]


def _strides_variables(model):
  return [v for v in model.trainable_variables
          if v.path.split('/')[-1] == 'strides']


def _small_resnet(**kwargs):
  """Stem + an identity stage + a projecting stage, one layer each."""
  kwargs.setdefault('num_output_classes', NUM_CLASSES)
  return resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                       kernel_size=3, channels_first=False, **kwargs)


@pytest.fixture(scope='module')
def diffstride_resnet18():
  keras.utils.set_random_seed(0)
  model = resnet.resnet18(num_output_classes=NUM_CLASSES, channels_first=False,
                          pooling_cls=pooling.DiffStride)
  model(_images())
  return model


@pytest.mark.parametrize('pooling_cls', POOLINGS,
                         ids=lambda p: 'conv' if p is None else p.__name__)
def test_resnet18_forward(pooling_cls):
  keras.utils.set_random_seed(0)
  model = resnet.resnet18(num_output_classes=NUM_CLASSES, channels_first=False,
                          pooling_cls=pooling_cls)
  logits = model(_images())
  assert tuple(logits.shape) == (SHAPE[0], NUM_CLASSES)
  assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
  # [ZeroPadding2D, Conv2D, (pooling), BN, ReLU, 4 blocks, GAP, Flatten, Dense]
  assert len(model.layers) == 11 + int(pooling_cls is not None)


def test_diffstride_shared_between_branches(diffstride_resnet18, monkeypatch):
  blocks = [l for l in diffstride_resnet18.layers
            if isinstance(l, resnet.ResnetBlock)]
  assert len(blocks) == 4
  assert not blocks[0].layers[0].project  # id_only=[0] in resnet18.
  for block in blocks[1:]:
    first = block.layers[0]
    assert first.project
    main_pools = [l for l in first.main_branch_layers()
                  if isinstance(l, pooling.DiffStride)]
    shortcut_pools = [l for l in first.shortcut_layers()
                      if isinstance(l, pooling.DiffStride)]
    assert len(main_pools) == len(shortcut_pools) == 1
    assert main_pools[0] is shortcut_pools[0] is first.pooling
    # Identity layers do not pool.
    assert all(layer.pooling is None for layer in block.layers[1:])

  # The shared layer really is called once per branch.
  pool = blocks[1].layers[0].pooling
  calls = []
  original_call = pool.call

  def spy(inputs, *args, **kwargs):
    calls.append(tuple(inputs.shape))
    return original_call(inputs, *args, **kwargs)

  monkeypatch.setattr(pool, 'call', spy)
  diffstride_resnet18(_images())
  assert len(calls) == 2


def test_diffstride_count(diffstride_resnet18):
  layers = _diffstride_layers(diffstride_resnet18)
  assert len(layers) == 4  # Stem + the three projecting stages.
  assert layers[0] is diffstride_resnet18.layers[2]
  variables = _strides_variables(diffstride_resnet18)
  assert len(variables) == 4
  assert {id(v) for v in variables} == {id(l.strides) for l in layers}


def test_gradients_reach_every_stride(diffstride_resnet18):
  model = diffstride_resnet18
  with tf.GradientTape() as tape:
    logits = model(_images(1), training=True)
    loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        _labels(), logits, from_logits=True))
  variables = model.trainable_variables
  grads = tape.gradient(loss, variables)
  assert all(g is not None for g in grads)
  by_id = {id(v): g for v, g in zip(variables, grads)}
  for layer in _diffstride_layers(model):
    grad = np.asarray(by_id[id(layer.strides)])
    assert np.all(np.isfinite(grad)), (layer.name, grad)
    assert np.any(grad != 0.0), (layer.name, grad)


def test_save_load_round_trip(diffstride_resnet18, tmp_path):
  model = diffstride_resnet18
  # Move BN statistics and strides away from their initial values.
  model(_images(2), training=True)
  for i, layer in enumerate(_diffstride_layers(model)):
    layer.strides.assign(layer.strides + 0.1 * (i + 1))
  path = tmp_path / 'resnet18_diffstride.keras'
  model.save(path)
  loaded = keras.saving.load_model(path)

  assert isinstance(loaded, resnet.Resnet)
  assert loaded.get_config()['pooling_cls'] == 'DiffStride'
  x = _images(3)
  np.testing.assert_allclose(
      keras.ops.convert_to_numpy(loaded(x, training=False)),
      keras.ops.convert_to_numpy(model(x, training=False)),
      rtol=1e-5, atol=1e-5)
  original = [l.strides.numpy() for l in _diffstride_layers(model)]
  restored = [l.strides.numpy() for l in _diffstride_layers(loaded)]
  assert len(restored) == 4
  for a, b in zip(original, restored):
    np.testing.assert_array_equal(a, b)


def test_gin_builds_resnet18_with_diffstride():
  gin.clear_config()
  try:
    gin.parse_config([
        'resnet18.num_output_classes = 10',
        'resnet18.pooling_cls = @DiffStride',
        'resnet18.channels_first = False',
    ])
    model = gin.get_configurable('resnet18')()
  finally:
    gin.clear_config()
  assert isinstance(model, resnet.Resnet)
  assert model.num_output_classes == 10
  assert model.get_config()['pooling_cls'] == 'DiffStride'
  logits = model(_images())
  assert tuple(logits.shape) == (SHAPE[0], NUM_CLASSES)
  assert len(_diffstride_layers(model)) == 4


def test_functional_model_wrapping_resnet18(diffstride_resnet18):
  inputs = keras.Input(SHAPE[1:])
  probs = keras.layers.Softmax()(diffstride_resnet18(inputs))
  model = keras.Model(inputs, probs)
  assert tuple(probs.shape) == (None, NUM_CLASSES)
  out = keras.ops.convert_to_numpy(model(_images(), training=False))
  assert out.shape == (SHAPE[0], NUM_CLASSES)
  np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_fit_one_step():
  keras.utils.set_random_seed(0)
  model = _small_resnet(pooling_cls=pooling.DiffStride)
  model.compile(optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                jit_compile='auto')
  model(_images())
  before = [v.numpy() for v in _strides_variables(model)]
  assert len(before) == 2
  history = model.fit(_images(), _labels(), batch_size=SHAPE[0], epochs=1,
                      verbose=0)
  assert np.isfinite(history.history['loss'][0])
  after = [v.numpy() for v in _strides_variables(model)]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_mismatched_filters_and_strides():
  with pytest.raises(ValueError, match='filters'):
    resnet.Resnet([8, 8, 16], [1, 2], num_output_classes=NUM_CLASSES,
                  kernel_size=3)
  with pytest.raises(ValueError):
    resnet.resnet18(strides=[1, 1, 2], num_output_classes=NUM_CLASSES)


def test_block_structure_and_identity_layers():
  block = resnet.ResnetBlock(filters=8, strides=2, num_layers=3,
                             kernel_size=3, channels_first=False,
                             pooling_cls=pooling.DiffStride)
  assert len(block.layers) == 3
  assert block.layers[0].project and block.layers[0].pooling is not None
  assert [l.project for l in block.layers[1:]] == [False, False]
  model = resnet.resnet56(num_output_classes=NUM_CLASSES, channels_first=False)
  blocks = [l for l in model.layers if isinstance(l, resnet.ResnetBlock)]
  assert [len(b.layers) for b in blocks] == [9, 9, 9]
  assert all(b.layers[0].project for b in blocks)  # No id_only in resnet56.


def test_pooling_cls_names():
  model = _small_resnet(pooling_cls='FixedSpectralPooling')
  assert model.pooling_cls is pooling.FixedSpectralPooling
  assert tuple(model(_images()).shape) == (SHAPE[0], NUM_CLASSES)
  assert resnet.resolve_pooling_cls('diffstride>DiffStride') is (
      pooling.DiffStride)
  assert resnet.resolve_pooling_cls('LearnableSpectralPooling') is (
      pooling.DiffStride)
  with pytest.raises(ValueError, match='Unknown pooling_cls'):
    resnet.resolve_pooling_cls('NoSuchPooling')

  class Unregistered(keras.layers.AveragePooling2D):

    def __init__(self, strides, data_format, **kwargs):
      super().__init__(pool_size=1, strides=strides, padding='same',
                       data_format=data_format, **kwargs)

  model = _small_resnet(pooling_cls=Unregistered)
  assert tuple(model(_images()).shape) == (SHAPE[0], NUM_CLASSES)
  with pytest.raises(ValueError, match='register'):
    model.get_config()


def test_residual_layer_config_round_trip():
  layer = resnet.ResidualLayer(8, 3, strides=(2, 2),
                               pooling_cls=pooling.SpatialPooling,
                               project=True, channels_first=False,
                               weight_decay=1e-4)
  config = layer.get_config()
  assert config['pooling_cls'] == 'SpatialPooling'
  clone = resnet.ResidualLayer.from_config(config)
  assert isinstance(clone.pooling, pooling.SpatialPooling)
  assert clone.get_config() == config
  out = clone(_images())
  assert tuple(out.shape) == (SHAPE[0], 16, 16, 8)


def test_gin_bound_pooling_arguments_survive_keras_round_trip(tmp_path):
  """Arguments bound to DiffStride with gin are part of the saved model."""
  gin.clear_config()
  try:
    gin.parse_config([
        'resnet18.pooling_cls = @DiffStride',
        'resnet18.channels_first = False',
        'DiffStride.smoothness_factor = 2.0',
        'DiffStride.shared_stride = True',
    ])
    model = gin.get_configurable('resnet18')(num_output_classes=3)
  finally:
    gin.clear_config()
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  y = model(x)
  path = str(tmp_path / 'm.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  layers = [l for l in loaded._flatten_layers()
            if isinstance(l, pooling.DiffStride)]
  assert len(layers) == 4
  assert all(l.smoothness_factor == 2.0 and l.shared_stride for l in layers)
  np.testing.assert_allclose(loaded(x), y, atol=1e-5)


@pytest.mark.parametrize('pooling_cls', [None, pooling.DiffStride])
def test_preactivation_resnet18(pooling_cls, tmp_path):
  model = resnet.resnet18(num_output_classes=10, channels_first=False,
                          pooling_cls=pooling_cls, preactivation=True)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  y = np.random.default_rng(1).integers(0, 10, size=(2,))
  with tf.GradientTape() as tape:
    logits = model(x, training=True)
    loss = keras.losses.sparse_categorical_crossentropy(y, logits,
                                                        from_logits=True)
  assert logits.shape == (2, 10)
  grads = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None for g in grads)
  if pooling_cls is not None:
    strides = [v for v in model.trainable_variables if 'strides' in v.path]
    assert len(strides) == 4
    for v in strides:
      g = grads[[w.path for w in model.trainable_variables].index(v.path)]
      assert np.all(np.isfinite(g)) and np.any(g != 0)
  # Structure: BN-ReLU before the head, none right after the stem; no BN after
  # a block's last convolution.
  stack_types = [type(l).__name__ for l in model._stack]
  assert stack_types[-5:-3] == ['BatchNormalization', 'ReLU']
  assert 'BatchNormalization' not in stack_types[:3]
  layer = model._stack[3 if pooling_cls is None else 4].layers[0]
  assert layer.preactivation and layer.bn2 is None and layer.bn_in is not None
  # Identity layers add the raw input: zeroing both convolutions' kernels
  # (no biases) makes an identity layer the identity.
  ident = resnet.ResidualLayer(filters=4, kernel_size=3, channels_first=False,
                               preactivation=True)
  z = np.random.default_rng(2).normal(size=(1, 8, 8, 4)).astype(np.float32)
  ident(z)
  for conv in (ident.strided_conv, ident.unstrided_conv):
    conv.kernel.assign(tf.zeros_like(conv.kernel))
  np.testing.assert_allclose(ident(z), z, atol=1e-6)
  path = str(tmp_path / 'preact.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)
  assert loaded.get_config()['preactivation'] is True


def test_stem_pooling_false_leaves_out_the_stem_stride():
  """DiffStride learns the stages' strides only: no layer after the stem
  convolution, whose 32 x 32 maps reach the first block; the option survives
  a config round trip; a stem stride other than 1 is refused."""
  keras.utils.set_random_seed(0)
  full = _small_resnet(pooling_cls=pooling.DiffStride)
  model = _small_resnet(pooling_cls=pooling.DiffStride, stem_pooling=False)
  assert model(_images()).shape == (2, NUM_CLASSES)
  assert len(_diffstride_layers(full)) == 2
  assert len(_diffstride_layers(model)) == 1
  assert model.downsampling_positions().keys() == {2}
  assert 0 in full.downsampling_positions()
  clone = resnet.Resnet.from_config(model.get_config())
  assert clone.get_config()['stem_pooling'] is False
  assert len(_diffstride_layers(clone)) == 1
  with pytest.raises(ValueError, match='stem_pooling'):
    resnet.Resnet([8, 8, 16], [2, 1, 2], num_output_classes=3,
                  pooling_cls=pooling.DiffStride, stem_pooling=False,
                  num_layers=1, kernel_size=3, channels_first=False)
