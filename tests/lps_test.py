"""LearnablePolyphasePooling (LPS): arguments, the hard choice in inference,
the seeded Gumbel-softmax in training, and how residual layers and the
registry use it. (Against NumPy, gradients, compiled modes and shift
invariance, on every backend: tests/backend_cases.py.)"""

import keras
from keras import ops
import numpy as np
import pytest

import diffstride
from diffstride import antialias
from diffstride import methods
from diffstride import resnet

_LPS = diffstride.LearnablePolyphasePooling


def _numpy(x):
  return np.asarray(ops.convert_to_numpy(x))


def _x(shape=(3, 6, 6, 2), seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype('f4')


@pytest.mark.parametrize('kwargs, name', [
    (dict(strides=1.5), 'strides'), (dict(strides=(2, 2.5)), 'strides'),
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(temperature=True), 'temperature'),
    (dict(temperature='1'), 'temperature'),
    (dict(hidden_channels=0), 'hidden_channels'),
    (dict(hidden_channels=2.0), 'hidden_channels'),
    (dict(hidden_channels=True), 'hidden_channels'),
    (dict(gumbel_noise=1), 'gumbel_noise'),
    (dict(hard_training='no'), 'hard_training'),
    (dict(seed=1.5), 'seed'), (dict(filter_size=8), 'filter_size'),
    (dict(data_format='NHWC'), 'data_format')])
def test_bad_arguments_fail_at_construction(kwargs, name):
  with pytest.raises(ValueError, match=name):
    _LPS(**kwargs)


def test_inference_keeps_the_component_of_largest_logit():
  """APS's rule on the learned logits: output, `select` and `call` with
  the indices agree; the scorer is one network for every component."""
  keras.utils.set_random_seed(0)
  layer = _LPS(strides=2, hidden_channels=3, data_format='channels_last')
  x = _x()
  y = _numpy(layer(x))
  components = antialias.polyphase_components(x, (2, 2), False)
  logits = _numpy(layer._scores(components))  # pylint: disable=protected-access
  assert logits.shape == (3, 4)
  best = np.argmax(logits, axis=1)
  np.testing.assert_array_equal(_numpy(layer.select(x)), best)
  np.testing.assert_array_equal(y, _numpy(components)[np.arange(3), best])
  np.testing.assert_array_equal(_numpy(layer(x, indices=best)), y)
  # Permuting the components permutes the logits (one shared network).
  swapped = _numpy(components)[:, ::-1]
  np.testing.assert_allclose(
      _numpy(layer._scores(swapped)), logits[:, ::-1],  # pylint: disable=protected-access
      rtol=1e-5, atol=1e-6)


def test_training_weights_sum_to_one_and_select_and_call_agree():
  keras.utils.set_random_seed(0)
  x = _x()
  layer = _LPS(strides=2, hidden_channels=3, gumbel_noise=False,
               data_format='channels_last')
  weights = _numpy(layer.select(x, training=True))
  assert weights.shape == (3, 4) and weights.dtype == np.float32
  assert np.all(weights > 0)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
  y = _numpy(layer(x, training=True))
  np.testing.assert_allclose(_numpy(layer(x, indices=weights)), y,
                             rtol=1e-6, atol=1e-6)
  components = _numpy(antialias.polyphase_components(x, (2, 2), False))
  np.testing.assert_allclose(
      y, np.einsum('bp,bphwc->bhwc', weights, components), rtol=1e-5,
      atol=1e-6)
  # Lower temperature: closer to the hard choice.
  cold = _LPS(strides=2, hidden_channels=3, gumbel_noise=False,
              temperature=1e-3, data_format='channels_last')
  cold.build(x.shape)
  cold.set_weights(layer.get_weights())
  np.testing.assert_allclose(_numpy(cold.select(x, training=True)),
                             np.eye(4)[_numpy(layer.select(x))], atol=1e-4)
  # Straight-through: one-hot forward.
  hard = _LPS(strides=2, hidden_channels=3, hard_training=True, seed=4,
              data_format='channels_last')
  one_hot = _numpy(hard.select(x, training=True))
  np.testing.assert_array_equal(np.sort(one_hot, axis=1),
                                np.tile([0.0, 0.0, 0.0, 1.0], (3, 1)))


def test_gumbel_noise_is_seeded():
  """The same seed and weights: the same noisy weights; another seed, or
  the next draw of one layer: others."""
  x = _x()
  a = _LPS(strides=2, hidden_channels=3, seed=7, data_format='channels_last')
  b = _LPS(strides=2, hidden_channels=3, seed=7, data_format='channels_last')
  c = _LPS(strides=2, hidden_channels=3, seed=8, data_format='channels_last')
  for layer in (a, b, c):
    layer.build(x.shape)
  b.set_weights(a.get_weights())
  c.set_weights(a.get_weights())
  wa = _numpy(a.select(x, training=True))
  np.testing.assert_array_equal(_numpy(b.select(x, training=True)), wa)
  assert not np.allclose(_numpy(c.select(x, training=True)), wa)
  assert not np.allclose(_numpy(a.select(x, training=True)), wa)
  np.testing.assert_allclose(wa.sum(axis=1), 1.0, rtol=1e-6)
  noiseless = _LPS(strides=2, hidden_channels=3, gumbel_noise=False,
                   data_format='channels_last')
  noiseless.build(x.shape)
  noiseless.set_weights(a.get_weights())
  assert not np.allclose(_numpy(noiseless.select(x, training=True)), wa)
  # Inference ignores the noise.
  np.testing.assert_array_equal(_numpy(a(x)), _numpy(noiseless(x)))


def test_residual_layer_passes_training_to_select():
  """The shortcut reuses the main branch's selection: indices in inference,
  the weights (one draw of noise) in training."""
  keras.utils.set_random_seed(0)
  layer = resnet.ResidualLayer(4, 3, strides=2, pooling_cls=_LPS,
                               project=True, channels_first=False,
                               pooling_kwargs=dict(hidden_channels=2))
  x = _x((2, 8, 8, 3))
  layer(x)
  pooling = layer.pooling
  seen = []
  original = pooling.select

  def spy(inputs, training=None):
    selection = original(inputs, training=training)
    seen.append((training, tuple(selection.shape)))
    return selection

  pooling.select = spy
  layer(x, training=True)
  layer(x)
  assert seen == [(True, (2, 4)), (None, (2,))]


def test_registry_configs_and_saving(tmp_path):
  method = methods.get('lps')
  assert method.layer_cls is _LPS and method.label == 'LPS'
  assert method.placement == 'after_activation'
  assert not method.learns_strides
  assert methods.for_layer(_LPS()).key == 'lps'
  assert methods.for_layer(diffstride.PolyphasePooling()).key == 'aps'
  assert methods.for_layer_name('LearnablePolyphasePooling') is method
  config = _LPS(strides=(3, 2), hidden_channels=5, temperature=0.5,
                gumbel_noise=False, hard_training=True, seed=3).get_config()
  assert _LPS.from_config(config).get_config() == config
  # A small ResNet: the scorers save and load.
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([4, 4, 8], [2, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3, pooling_cls='LearnablePolyphasePooling',
                        pooling_kwargs=dict(hidden_channels=2))
  x = _x((2, 16, 16, 3))
  expected = _numpy(model(x))
  assert len([l for l in methods.downsampling_layers(model)
              if isinstance(l, _LPS)]) == 2
  path = str(tmp_path / 'lps.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(_numpy(loaded(x)), expected, rtol=1e-6,
                             atol=1e-6)


def test_resnet_passes_training_to_every_lps_layer(monkeypatch):
  """The stem's LPS too: `stateless_call` (JAX's training step) runs
  `Resnet.call` without Keras' call context, so the flag goes explicitly."""
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([4, 4, 8], [2, 1, 2], id_only=[0], num_layers=1,
                        kernel_size=3, channels_first=False,
                        num_output_classes=3,
                        pooling_cls='LearnablePolyphasePooling',
                        pooling_kwargs=dict(hidden_channels=2))
  x = _x((2, 16, 16, 3))
  model(x)
  seen = []
  original = _LPS._selection  # pylint: disable=protected-access

  def spy(self, logits, training):
    seen.append((self.name, training))
    return original(self, logits, training)

  monkeypatch.setattr(_LPS, '_selection', spy)
  model.stateless_call([v.value for v in model.trainable_variables],
                       [v.value for v in model.non_trainable_variables], x,
                       training=True)
  assert len(seen) == 2 and all(training for _, training in seen), seen
