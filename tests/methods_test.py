"""The registry of downsampling methods, and the core/harness split.

A toy method registered here (its layer, one registry entry, one gin file)
goes through ResNet construction, saving, the complexity penalty, the
training harness, metrics.json and the report with no other change.
"""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

import diffstride
from diffstride import complexity
from diffstride import methods
from diffstride import resnet
import diffstride.experiments  # pylint: disable=unused-import
from diffstride.experiments import report
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order


def test_import_diffstride_loads_none_of_the_harness():
  # What `import diffstride` adds to what Keras, TensorFlow and NumPy load by
  # themselves (Keras imports matplotlib when it is installed).
  code = ('import sys, keras, numpy, tensorflow\n'
          'before = set(sys.modules)\n'
          'import diffstride\n'
          'print(sorted(set(sys.modules) - before))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True)
  added = eval(out.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert 'diffstride.layers.diff_stride' in added
  assert not [m for m in added if m.split('.')[0] != 'diffstride'], added
  assert not [m for m in added if m.startswith('diffstride.experiments')]


def test_every_method_has_a_gin_base_file_and_a_layer_name():
  for method in methods.all_methods():
    path = os.path.join(gin_testing.GIN_DIR, 'base', f'{method.key}.gin')
    assert os.path.exists(path), path
    if method.layer_cls is not None:
      assert resnet.resolve_pooling_cls(method.layer_name) is method.layer_cls
      assert methods.for_layer_cls(method.layer_cls) is method


def test_lookups():
  assert methods.for_layer_name(None).key == 'strided_conv'
  assert methods.for_layer_name('LearnableSpectralPooling').key == 'diffstride'
  assert methods.for_layer_name('Nope') is None
  assert methods.for_layer(diffstride.DiffStride()) is methods.DIFFSTRIDE
  assert methods.for_layer(keras.layers.ReLU()) is None
  with pytest.raises(ValueError, match='Unknown downsampling method'):
    methods.get('nope')
  with pytest.raises(ValueError, match='already registered'):
    methods.register(methods.DownsamplingMethod('diffstride', 'again'))
  with pytest.raises(ValueError, match='already the layer'):
    methods.register(methods.DownsamplingMethod(
        'other', 'other', layer_cls=diffstride.DiffStride, layer_names=('X',)))


def test_stride_helpers():
  assert diffstride.minimum_stride(32, 4.0) == np.float32(32) / np.float32(28)
  assert diffstride.stride_pair(2) == (2.0, 2.0)
  assert diffstride.stride_pair(np.array([1.5], np.float32)) == (1.5, 1.5)
  assert diffstride.stride_pair([1.5, 3.0]) == (1.5, 3.0)


@keras.saving.register_keras_serializable(package='methods_test')
class ToyPooling(keras.layers.Layer):
  """Max pooling with whole strides (a stand-in for a new method)."""

  def __init__(self, strides=(2, 2), data_format='channels_last', **kwargs):
    super().__init__(**kwargs)
    self.strides = tuple(int(s) for s in diffstride.stride_pair(strides))
    self.data_format = data_format
    self._pool = keras.layers.MaxPooling2D(self.strides, self.strides,
                                           padding='same',
                                           data_format=data_format)

  def call(self, x):
    return self._pool(x)

  def compute_output_shape(self, input_shape):
    return self._pool.compute_output_shape(input_shape)

  def get_config(self):
    return {**super().get_config(), 'strides': self.strides,
            'data_format': self.data_format}


@pytest.fixture
def toy_method():
  method = methods.register(methods.DownsamplingMethod(
      key='toy_pooling', label='Toy pooling', layer_cls=ToyPooling))
  yield method
  methods.unregister('toy_pooling')


def test_a_registered_method_goes_through_model_and_penalty(toy_method,
                                                            tmp_path):
  model = resnet.Resnet([4, 8, 8], [1, 2, 2], num_output_classes=3,
                        num_layers=1, kernel_size=3, channels_first=False,
                        pooling_cls='ToyPooling')
  model.build((None, 16, 16, 3))
  assert set(map(type, model.downsampling_positions().values())) == {ToyPooling}
  assert model.get_config()['pooling_cls'] == 'ToyPooling'
  path = str(tmp_path / 'toy.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype('float32')
  np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
  # Three stages open at the stem and the two projecting blocks.
  assert len(complexity.network_stages(model)) == 4
  assert len(methods.downsampling_layers(model)) == 3


def test_harness_and_report_run_a_registered_method(toy_method, tmp_path):
  gin_file = tmp_path / 'toy_pooling.gin'
  gin_file.write_text("include 'base/builtin_recipe.gin'\n"
                      "Resnet.pooling_cls = 'ToyPooling'\n")
  gin.add_config_file_search_path(gin_testing.GIN_DIR)
  gin.parse_config_files_and_bindings([str(gin_file)], [
      'train.epochs = 1', 'train.max_steps_per_epoch = 2',
      'train.max_eval_steps = 1', 'train.verbose = 0',
      'train.shift_consistency_max_shift = 0',
      'image_datasets.batch_size = 4', 'image_datasets.max_train_examples = 16',
      'image_datasets.max_test_examples = 8'])
  workdir = str(tmp_path / 'run')
  metrics = training.train(workdir=workdir)
  assert metrics['method'] == 'toy_pooling'
  assert metrics['learned_strides'] == {}
  with open(os.path.join(workdir, 'metrics.json')) as f:
    assert json.load(f)['method'] == 'toy_pooling'
  written = report.write_report([workdir], str(tmp_path / 'report'))
  with open(written['report']) as f:
    text = f.read()
  assert 'Toy pooling' in text
