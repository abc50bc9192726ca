"""BlurPool, PolyphasePooling and circular padding: arguments, filters and
where the ResNets put them. (Their numbers against the reference
algorithms, gradients and compiled modes, on every backend:
tests/backend_cases.py.)"""

import keras
import numpy as np
import pytest

import diffstride
from diffstride import antialias
from diffstride import complexity
from diffstride import methods
from diffstride import resnet


def test_binomial_filters_are_pascal_rows():
  for size in range(1, 8):
    f = antialias.binomial_filter(size)
    row = np.array([1.0])
    for _ in range(size - 1):
      row = np.convolve(row, [1.0, 1.0])
    np.testing.assert_allclose(f, np.outer(row, row) / row.sum()**2,
                               rtol=1e-15)
    assert f.shape == (size, size) and abs(f.sum() - 1.0) < 1e-15
  assert antialias.filter_padding(4) == (1, 2)
  assert antialias.filter_padding(5) == (2, 2)


@pytest.mark.parametrize('layer_cls', [diffstride.BlurPool,
                                       diffstride.PolyphasePooling])
@pytest.mark.parametrize('kwargs, name', [
    (dict(strides=1.5), 'strides'), (dict(strides=(2, 2.5)), 'strides'),
    (dict(strides=0), 'strides'), (dict(filter_size=0), 'filter_size'),
    (dict(filter_size=8), 'filter_size'), (dict(filter_size=2.0), 'filter_size'),
    (dict(filter_size=True), 'filter_size'),
    (dict(data_format='NHWC'), 'data_format')])
def test_bad_arguments_fail_at_construction(layer_cls, kwargs, name):
  with pytest.raises(ValueError, match=name):
    layer_cls(**kwargs)


def test_bad_padding_arguments():
  with pytest.raises(ValueError, match='padding'):
    diffstride.BlurPool(padding='replicate')
  with pytest.raises(ValueError, match='conv_padding'):
    resnet.resnet18(num_output_classes=2, conv_padding='reflect')
  with pytest.raises(ValueError, match='odd kernel'):
    resnet.ResidualLayer(4, 2, project=True, conv_padding='circular')
  with pytest.raises(ValueError, match='needs a spatial size of at least 3'):
    diffstride.BlurPool(filter_size=5, data_format='channels_last')(
        np.zeros((1, 2, 8, 1), 'float32'))


def test_padding_modes_match_numpy():
  x = np.arange(2 * 5 * 4 * 3, dtype='float32').reshape(2, 5, 4, 3)
  for mode, numpy_mode in (('zero', 'constant'), ('reflect', 'reflect'),
                           ('circular', 'wrap')):
    got = keras.ops.convert_to_numpy(antialias.pad_spatial(
        x, ((2, 1), (3, 0)), mode, channels_first=False))
    want = np.pad(x, ((0, 0), (2, 1), (3, 0), (0, 0)), mode=numpy_mode)
    np.testing.assert_array_equal(got, want)


def test_registry_knows_the_methods_and_their_placement():
  assert methods.get('blurpool').layer_cls is diffstride.BlurPool
  assert methods.get('aps').layer_cls is diffstride.PolyphasePooling
  assert methods.placement_of(diffstride.BlurPool) == 'after_activation'
  assert methods.placement_of(diffstride.DiffStride) == 'after_conv'
  assert methods.for_layer_name('PolyphasePooling').key == 'aps'


def _types(layers):
  return [type(l).__name__ for l in layers]


def test_blurpool_goes_after_the_activation_as_in_the_paper():
  """conv (stride 1) -> BN -> ReLU -> BlurPool -> conv -> BN; the shortcut
  blurs before its 1 x 1 convolution; the stem likewise; the ImageNet stem's
  max pooling runs at stride 1 before a BlurPool of stride 2; a stride of 1
  adds no layer."""
  model = resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3, pooling_cls='BlurPool',
                        stem='imagenet')
  model(np.zeros((1, 32, 32, 3), 'float32'))
  assert _types(model.stack[:6]) == [
      'ZeroPadding2D', 'Conv2D', 'BatchNormalization', 'ReLU',
      'MaxPooling2D', 'BlurPool']
  assert model.stack[1].strides == (1, 1)
  assert model.stack[4].strides == (1, 1)
  assert model.stack[5].strides == (2, 2)
  first = model.stack[7].layers[0]  # [6]: the identity stage.
  assert _types(first.main_branch_layers()) == [
      'Conv2D', 'BatchNormalization', 'BlurPool', 'Conv2D',
      'BatchNormalization']
  assert _types(first.shortcut_layers()) == [
      'BlurPool', 'Conv2D', 'BatchNormalization']
  assert first.strided_conv.strides == (1, 1)
  # The stem's stride 1: no pooling layer there; only the stage's.
  assert sorted(model.downsampling_positions()) == [2]
  assert model.stack[6].layers[0].pooling is None
  assert model(np.zeros((2, 32, 32, 3), 'float32')).shape == (2, 3)
  # The complexity values read the layers' strides: the stem's max pooling
  # BlurPool and the stage's.
  values = complexity.complexity_values(model, (32, 32))
  assert values['strides'] == [[2.0, 2.0], [2.0, 2.0]], values


def test_diffstride_placement_is_unchanged():
  model = resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3, pooling_cls='DiffStride')
  assert _types(model.stack[:5]) == [
      'ZeroPadding2D', 'Conv2D', 'DiffStride', 'BatchNormalization', 'ReLU']
  first = model.stack[6].layers[0]  # [5]: the identity stage.
  assert _types(first.main_branch_layers()) == [
      'Conv2D', 'DiffStride', 'BatchNormalization', 'Conv2D',
      'BatchNormalization']


@pytest.mark.parametrize('pooling_cls', ['BlurPool', 'PolyphasePooling'])
def test_resnet_round_trips_through_keras_files(pooling_cls, tmp_path):
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([8, 8, 16], [2, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3, pooling_cls=pooling_cls,
                        conv_padding='circular',
                        pooling_kwargs=dict(filter_size=3))
  x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype('f4')
  expected = keras.ops.convert_to_numpy(model(x))
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected,
                             rtol=1e-6, atol=1e-6)
  layers = methods.downsampling_layers(loaded)
  assert len(layers) == 2 and all(l.filter_size == 3 for l in layers)
  assert loaded.get_config()['conv_padding'] == 'circular'
