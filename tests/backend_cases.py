"""The layers and models on the Keras backend given by KERAS_BACKEND.

Not collected by itself (the name does not end in _test.py):
`tests/backends_test.py` runs it once per backend (tensorflow, jax, torch),
each in its own process, since Keras picks its backend at import.

Gradients come from each backend's own machinery (tf.GradientTape,
jax.grad, torch autograd); JAX also runs everything under `jax.jit`.
"""

import functools
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
from keras import ops
import numpy as np
import pytest

import diffstride
from diffstride import frontend as frontend_lib
from diffstride import pooling
from diffstride import resnet
from diffstride import sizes
import layer_testing
import reference_algorithms

BACKEND = keras.backend.backend()
_DIR = os.path.dirname(os.path.abspath(__file__))
_FIXTURE = os.path.join(_DIR, 'data', 'official_diffstride.npz')
_DATA = np.load(_FIXTURE)
_CASES = json.loads(str(_DATA['cases_json']))
_RTOL = 1e-4  # As tests/reference_test.py.
_LAYERS = {'DiffStride': diffstride.DiffStride,
           'FixedSpectralPooling': diffstride.FixedSpectralPooling}
# Where artifacts for the cross-backend save / load test go (set by
# backends_test.py); unset: that test is skipped.
_ARTIFACTS = os.environ.get('DIFFSTRIDE_BACKEND_ARTIFACTS')


_numpy = layer_testing.numpy


def _rel(actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _modes():
  """How the layers run here: eager, and the backend's compiled mode."""
  return tuple(dict.fromkeys(('eager', layer_testing.compiled_mode())))


@pytest.mark.parametrize('mode', _modes())
@pytest.mark.parametrize('index', range(len(_CASES)),
                         ids=[f'case{i}' for i in range(len(_CASES))])
def test_matches_official_fixture(index, mode):
  case = _CASES[index]
  kwargs = {k: v for k, v in case.items()
            if k not in ('layer', 'shape', 'output_shape')}
  kwargs['strides'] = tuple(kwargs['strides'])
  layer = _LAYERS[case['layer']](**kwargs)
  x = _DATA[f'case{index}_x']
  layer.build(x.shape)
  y, dx, dw = layer_testing.forward_and_grads(
      layer, x, lambda y: ops.sum(ops.sin(y)), mode)
  assert y.shape == tuple(case['output_shape'])
  assert _rel(y, _DATA[f'case{index}_y']) < _RTOL
  assert _rel(dx, _DATA[f'case{index}_dx']) < _RTOL
  if case['layer'] == 'DiffStride':
    assert _rel(dw[0], _DATA[f'case{index}_dstrides']) < _RTOL


# ------------------------------------------------------------ standard checks

# (id, layer class, constructor arguments, input shape, output shape,
#  trainable / non-trainable weights): every layer of the package.
_LAYER_CASES = [
    ('diffstride_cl', diffstride.DiffStride,
     dict(strides=(2.3, 2.7), data_format='channels_last'),
     (2, 32, 32, 3), (2, 22, 20, 3), 1, 0),
    ('diffstride_cf_shared', diffstride.DiffStride,
     dict(strides=2.3, shared_stride=True, data_format='channels_first'),
     (2, 3, 32, 32), (2, 3, 22, 22), 1, 0),
    ('diffstride_fft_odd', diffstride.DiffStride,
     dict(strides=(1.7, 3.1), data_format='channels_last',
          implementation='fft'),
     (2, 31, 33, 2), (2, 27, 20, 2), 1, 0),
    ('diffstride_no_cropping', diffstride.DiffStride,
     dict(strides=(3.0, 2.0), cropping=False, data_format='channels_last'),
     (1, 20, 18, 2), (1, 20, 18, 2), 1, 0),
    ('diffstride1d_cl', diffstride.DiffStride1D,
     dict(strides=3.3, data_format='channels_last'),
     (2, 63, 3), (2, 28, 3), 1, 0),
    ('diffstride1d_cf_fft', diffstride.DiffStride1D,
     dict(strides=2.2, data_format='channels_first', implementation='fft'),
     (2, 3, 64), (2, 3, 38), 1, 0),
    ('dct_diffstride_cl', diffstride.DCTDiffStride,
     dict(strides=(2.3, 1.7), data_format='channels_last'),
     (2, 15, 16, 2), (2, 11, 14, 2), 1, 0),
    ('dct_diffstride_cf_shared', diffstride.DCTDiffStride,
     dict(strides=2.7, shared_stride=True, data_format='channels_first'),
     (1, 2, 16, 13), (1, 2, 10, 9), 1, 0),
    ('fixed_spectral_pooling', diffstride.FixedSpectralPooling,
     dict(strides=(2, 4), data_format='channels_last'),
     (1, 64, 64, 3), (1, 32, 16, 3), 0, 1),
    ('fixed_spectral_pooling_fft_cf', diffstride.FixedSpectralPooling,
     dict(strides=(1.5, 2.0), data_format='channels_first',
          implementation='fft'),
     (1, 2, 33, 30), (1, 2, 22, 15), 0, 1),
    ('spatial_pooling', diffstride.SpatialPooling,
     dict(strides=(2, 4), data_format='channels_last'),
     (1, 64, 64, 3), (1, 32, 16, 3), 0, 0),
    ('mel_frontend', diffstride.MelFrontend, dict(num_mel_bins=16),
     (2, 1000), (2, 7, 16), 0, 0),
    ('blur_pool', diffstride.BlurPool,
     dict(strides=2, data_format='channels_last'),
     (2, 16, 16, 3), (2, 8, 8, 3), 0, 0),
    ('blur_pool_cf_circular_odd', diffstride.BlurPool,
     dict(strides=(2, 3), filter_size=3, padding='circular',
          data_format='channels_first'),
     (2, 3, 15, 17), (2, 3, 8, 6), 0, 0),
    ('polyphase_pooling', diffstride.PolyphasePooling,
     dict(strides=2, data_format='channels_last'),
     (2, 16, 16, 3), (2, 8, 8, 3), 0, 0),
    ('polyphase_pooling_cf_filtered_odd', diffstride.PolyphasePooling,
     dict(strides=(3, 2), filter_size=3, data_format='channels_first'),
     (2, 3, 13, 9), (2, 3, 5, 5), 0, 0),
    # In inference: the hard choice (the scorer's weights get zero
    # gradients; training: test_lps_training_selection_gradients).
    ('learnable_polyphase_pooling', diffstride.LearnablePolyphasePooling,
     dict(strides=2, hidden_channels=2, data_format='channels_last'),
     (2, 8, 8, 3), (2, 4, 4, 3), 4, 0),
    ('learnable_polyphase_pooling_cf_filtered_odd',
     diffstride.LearnablePolyphasePooling,
     dict(strides=(3, 2), hidden_channels=2, filter_size=3,
          data_format='channels_first'),
     (2, 2, 7, 5), (2, 2, 3, 3), 4, 0),
]


@pytest.mark.parametrize('case', _LAYER_CASES, ids=[c[0] for c in _LAYER_CASES])
def test_layer_standard_checks(case):
  _, layer_cls, kwargs, input_shape, output_shape, trainable, fixed = case
  layer_testing.run_layer_test(
      layer_cls, kwargs, input_shape, output_shape,
      expected_num_trainable_weights=trainable,
      expected_num_non_trainable_weights=fixed)


def _channels_first(x):
  return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


@pytest.mark.parametrize('padding', ('reflect', 'zero', 'circular'))
def test_reference_blurpool(padding):
  """adobe/antialiased-cnns' algorithm, every filter size, both formats."""
  x = np.random.default_rng(9).standard_normal((2, 11, 10, 3)).astype('f4')
  for filter_size in range(1, 8):
    for strides in ((2, 2), (3, 2)):
      expected = reference_algorithms.blurpool(x, filter_size, strides,
                                               padding)
      for data_format in ('channels_last', 'channels_first'):
        layer = diffstride.BlurPool(strides=strides, filter_size=filter_size,
                                    padding=padding, data_format=data_format)
        if data_format == 'channels_first':
          got = _numpy(layer(_channels_first(x))).transpose(0, 2, 3, 1)
        else:
          got = _numpy(layer(x))
        assert got.shape == expected.shape, (filter_size, strides)
        assert _rel(got, expected) < 1e-5, (filter_size, strides, data_format)


def test_reference_aps():
  """The largest-norm polyphase component, the first of equal norms."""
  rng = np.random.default_rng(10)
  x = rng.standard_normal((4, 9, 8, 3)).astype('f4')
  x[1] = 1.0  # Every component has the same norm: the first one.
  x[2, 1::2, 1::2] *= 3.0  # Component (1, 1) is the largest at stride 2.
  for strides in ((2, 2), (3, 2)):
    expected, index = reference_algorithms.aps(x, strides)
    for data_format in ('channels_last', 'channels_first'):
      layer = diffstride.PolyphasePooling(strides=strides,
                                          data_format=data_format)
      inputs = _channels_first(x) if data_format == 'channels_first' else x
      got = _numpy(layer(inputs))
      if data_format == 'channels_first':
        got = got.transpose(0, 2, 3, 1)
      np.testing.assert_array_equal(_numpy(layer.select(inputs)), index)
      assert _rel(got, expected) < 1e-6, (strides, data_format)
    assert index[1] == 0
    if strides == (2, 2):
      assert index[2] == 3


def _circular_conv3x3(x, kernel, bias):
  """A 3 x 3 convolution of [N, h, w, C] maps padded circularly (NumPy)."""
  out = np.zeros(x.shape[:3] + (kernel.shape[3],)) + bias
  for i in range(3):
    for j in range(3):
      out += np.roll(x, (1 - i, 1 - j), axis=(1, 2)) @ kernel[i, j]
  return out


def _lps_logits(layer, components):
  """LPS's scorer in NumPy: ([B, P] logits of [B, P, h, w, C] components,
  the smallest |pre-activation| of its ReLU)."""
  b, p = components.shape[:2]
  maps = components.reshape((b * p,) + components.shape[2:]).astype('f8')
  k1, b1, k2, dense = [_numpy(w).astype('f8')
                       for w in layer.trainable_weights]
  a1 = _circular_conv3x3(maps, k1, b1)
  a2 = _circular_conv3x3(np.maximum(a1, 0.0), k2, 0.0)
  logits = (a2.mean(axis=(1, 2)) @ dense).reshape(b, p)
  return logits, np.min(np.abs(a1))


def _polyphase(x, strides):
  """[B, P, h, w, C] polyphase components of channels_last x (NumPy)."""
  s_h, s_w = strides
  pads = ((0, 0), (0, -x.shape[1] % s_h), (0, -x.shape[2] % s_w), (0, 0))
  padded = np.pad(x, pads, mode='wrap')
  return np.stack([padded[:, i::s_h, j::s_w] for i in range(s_h)
                   for j in range(s_w)], axis=1)


class _TrainingCall(keras.layers.Layer):
  """Calls a layer with training=True (the gradient checks call layer(x))."""

  def __init__(self, inner, **kwargs):
    super().__init__(**kwargs)
    self.inner = inner

  def call(self, inputs):
    return self.inner(inputs, training=True)


def test_lps_training_selection_gradients():
  """Training without noise: sum_k softmax(z / tau)_k x_k, z the scorer's
  logits recomputed in NumPy from its weights and the polyphase components
  (both data formats); the gradients of the input and of every scorer
  weight (non-zero) match finite differences, eager and compiled."""
  x = np.random.default_rng(13).standard_normal((2, 7, 6, 3)).astype('f4')
  strides, tau = (2, 3), 0.7
  components = _polyphase(x, strides)
  for data_format in ('channels_last', 'channels_first'):
    keras.utils.set_random_seed(1)
    layer = diffstride.LearnablePolyphasePooling(
        strides=strides, hidden_channels=3, temperature=tau,
        gumbel_noise=False, data_format=data_format)
    cf = data_format == 'channels_first'
    inputs = _channels_first(x) if cf else x
    got = _numpy(layer(inputs, training=True))
    if cf:
      got = got.transpose(0, 2, 3, 1)
    z, _ = _lps_logits(layer, components)
    w = np.exp(z / tau - np.max(z / tau, axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    expected = np.einsum('bp,bphwc->bhwc', w, components)
    assert _rel(got, expected) < 1e-5, data_format
    np.testing.assert_allclose(_numpy(layer.select(inputs, training=True)),
                               w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_numpy(layer.select(inputs)),
                                  np.argmax(z, axis=1))
  # Finite differences across a ReLU's kink are no derivative: a small map
  # and the first initialisation whose pre-activations all stay 0.01 away
  # from 0 (a step of 1e-3 moves them by less).
  x = np.random.default_rng(14).standard_normal((1, 4, 6, 2)).astype('f4')
  for seed in range(50):
    keras.utils.set_random_seed(seed)
    layer = diffstride.LearnablePolyphasePooling(
        strides=strides, hidden_channels=2, temperature=tau,
        gumbel_noise=False, data_format='channels_last')
    layer.build(x.shape)
    if _lps_logits(layer, _polyphase(x, strides))[1] > 1e-2:
      break
  else:
    pytest.fail('every initialisation has a pre-activation near 0')
  wrapper = _TrainingCall(layer, name='training_call')
  _, _, grads = layer_testing.forward_and_grads(
      wrapper, x, lambda y: ops.sum(ops.sin(y)))
  assert len(grads) == 4
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0)
  layer_testing._check_gradients(  # pylint: disable=protected-access
      wrapper, x, (1, 2, 2, 2), seed=3, fd_eps=1e-3, fd_atol=3e-3)


@pytest.mark.parametrize('mode', _modes())
def test_reference_dct_diffstride(mode):
  """scipy.fft.dctn / idctn (orthonormal) with the mask: odd and even sizes,
  fractional strides, both data formats, eager and compiled."""
  rng = np.random.default_rng(12)
  for shape, strides in (((2, 15, 16, 3), (2.3, 1.6)),
                         ((1, 9, 20, 2), (1.0, 3.7))):
    x = rng.standard_normal(shape).astype('f4')
    expected = reference_algorithms.dct_diffstride(x, strides)
    for data_format in ('channels_last', 'channels_first'):
      layer = diffstride.DCTDiffStride(strides=strides,
                                       data_format=data_format)
      inputs = _channels_first(x) if data_format == 'channels_first' else x
      layer.build(inputs.shape)
      got = layer_testing.forward_and_grads(layer, inputs, ops.sum, mode)[0]
      if data_format == 'channels_first':
        got = got.transpose(0, 2, 3, 1)
      assert got.shape == expected.shape, (shape, strides, data_format)
      assert _rel(got, expected) < 1e-5, (shape, strides, data_format)


def test_shifts_match_numpy():
  """`diffstride.shifts` (shift consistency's shifts): circular shifts are
  np.roll per example, crop-and-pad shifts np.roll with the wrapped part
  zeroed, along any axis."""
  from diffstride import shifts  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(15).standard_normal((3, 7, 6, 2)).astype('f4')
  offsets = np.array([[1, -2], [0, 3], [-3, 0]])
  got = _numpy(shifts.shift_images(x, offsets, 'circular'))
  rolled = np.stack([np.roll(x[i], tuple(offsets[i]), axis=(0, 1))
                     for i in range(3)])
  np.testing.assert_array_equal(got, rolled)
  got = _numpy(shifts.shift_images(x, offsets, 'crop_pad'))
  expected = rolled.copy()
  for i, (dy, dx) in enumerate(offsets):  # Zero what wrapped around.
    rows = slice(0, dy) if dy > 0 else slice(7 + dy, 7)
    cols = slice(0, dx) if dx > 0 else slice(6 + dx, 6)
    expected[i, rows] = 0
    expected[i, :, cols] = 0
  np.testing.assert_array_equal(got, expected)


def test_stride_constraint():
  constraint = diffstride.StrideConstraint(lower_limit=1.5, upper_limit=6.0)
  got = _numpy(constraint(ops.convert_to_tensor(
      np.array([np.nan, np.inf, -np.inf, 3.0], np.float32))))
  np.testing.assert_array_equal(got, [1.5, 6.0, 1.5, 3.0])


def _reference_1d(x, stride, smoothness=4.0):
  """Direct numpy DiffStride1D along the last axis (tests/pooling1d_test)."""
  length = x.shape[-1]
  stride = max(stride, length / (length - smoothness))
  t = max(length / stride, 2.0) / 2.0 + 1.0
  mask = np.clip((smoothness + t - np.arange(length // 2 + 1)) / smoothness,
                 0.0, 1.0)
  bins = int(np.sum(mask > 0))
  spec = np.fft.rfft(x.astype(np.float64), axis=-1) * mask
  return np.fft.irfft(spec[..., :bins], n=2 * (bins - 1), axis=-1)


@pytest.mark.parametrize('data_format', ('channels_last', 'channels_first'))
@pytest.mark.parametrize('length, stride', [(64, 2.0), (63, 3.3), (50, 1.0)])
def test_diffstride1d_matches_numpy(length, stride, data_format):
  x = np.random.default_rng(2).standard_normal((2, 3, length)).astype('f4')
  layer = diffstride.DiffStride1D(strides=stride, data_format=data_format)
  inputs = x if data_format == 'channels_first' else x.transpose(0, 2, 1)
  y = _numpy(layer(inputs))
  if data_format == 'channels_last':
    y = y.transpose(0, 2, 1)
  expected = _reference_1d(x, stride)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------ training


def _energy_model(shared_stride=False, size=32):
  """conv -> DiffStride -> conv -> mean energy: training on a zero target
  pushes the strides up steadily (a size change every few steps)."""
  inputs = keras.Input((size, size, 3))
  y = keras.layers.Conv2D(3, 3, padding='same', name='conv_in')(inputs)
  strides = (2.1, 2.1) if shared_stride else (2.1, 2.6)
  y = diffstride.DiffStride(strides=strides, shared_stride=shared_stride,
                            data_format='channels_last', name='ds')(y)
  y = keras.layers.Conv2D(4, 3, padding='same', name='conv_out')(y)
  energy = keras.layers.Lambda(
      lambda t: ops.mean(ops.square(t), axis=(1, 2, 3))[:, None])(y)
  return keras.Model(inputs, energy)


class _Record(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.losses, self.strides = [], []

  def on_train_batch_end(self, batch, logs=None):
    self.losses.append(float(logs['loss']))
    layer = self.model.get_layer('ds')  # (Syncs the JAX state.)
    self.strides.append(_numpy(layer.strides).copy())


def _data(size=32):
  rng = np.random.default_rng(0)
  return (rng.standard_normal((8, size, size, 3)).astype('f4'),
          np.zeros((8, 1), 'f4'))


def _fit(jit, steps=12, shared_stride=False):
  keras.utils.set_random_seed(0)
  model = _energy_model(shared_stride)
  tracker = sizes.track_sizes(model)
  model.compile(optimizer=keras.optimizers.Adam(0.1), loss='mse',
                jit_compile=jit)
  initial = _numpy(model.get_layer('ds').strides).copy()
  record = _Record()
  x, t = _data()
  model.fit(x, t, batch_size=8, epochs=steps, verbose=0, shuffle=False,
            callbacks=[record])
  return model, tracker, initial, record


@functools.lru_cache(maxsize=None)
def _eager_fit(shared_stride):
  """(initial strides, `_Record`) of `_fit(False, shared_stride=...)`, run
  once per process: the tests below only read them."""
  _, _, initial, record = _fit(False, shared_stride=shared_stride)
  return initial, record


def _size_changes(initial, strides_after_each_step, shared_stride=False):
  """Changes of the output size between consecutive steps' strides."""
  before = [initial] + list(strides_after_each_step[:-1])
  out = [diffstride.diffstride_output_size(32, 32, tuple(s.tolist() * (
      2 if shared_stride else 1)), shared_stride=shared_stride)
         for s in before]
  return sum(a != b for a, b in zip(out[:-1], out[1:]))


_NOT_COMPILED_ON_TORCH = ('Keras does not compile PyTorch steps here '
                          '(jit_compile means torch.compile, not tested)')


@pytest.mark.parametrize('shared_stride', (False, True),
                         ids=['per_axis', 'shared'])
def test_fit_moves_strides_and_changes_sizes(shared_stride):
  initial, record = _eager_fit(shared_stride)
  assert _size_changes(initial, record.strides, shared_stride) >= 1, (
      record.strides)
  assert np.all(np.abs(record.strides[-1] - initial) > 0.2)


@pytest.mark.parametrize('shared_stride', (False, True),
                         ids=['per_axis', 'shared'])
def test_compiled_fit_equals_uncompiled_fit(shared_stride):
  """Compiled (XLA / jax.jit) and uncompiled fits give the same strides and
  losses step by step; one rebuild per size change."""
  if BACKEND == 'torch':
    pytest.skip(_NOT_COMPILED_ON_TORCH)
  initial, record = _eager_fit(shared_stride)
  changes = _size_changes(initial, record.strides, shared_stride)
  model, tracker, initial_jit, record_jit = _fit(True,
                                                 shared_stride=shared_stride)
  assert model.jit_compile is True
  np.testing.assert_array_equal(initial, initial_jit)
  np.testing.assert_allclose(record_jit.strides, record.strides, rtol=1e-4)
  np.testing.assert_allclose(record_jit.losses, record.losses, rtol=1e-3,
                             atol=1e-6)
  assert changes >= 1
  assert tracker.size_changes == changes
  assert tracker.recompilations['train'] == changes
  assert tracker.reuses['train'] == 0
  assert [e[0] for e in tracker.events].count('recompile_train') == changes


def test_predict_evaluate_after_training_use_current_sizes():
  jit = BACKEND in ('tensorflow', 'jax')
  model, tracker, _, _ = _fit(jit, steps=6)
  layer = model.get_layer('ds')
  x, t = _data()
  eager = _numpy(model(x))  # Eager: sizes from the strides' values.
  np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-4,
                             atol=1e-6)
  loss = model.evaluate(x, t, verbose=0)
  np.testing.assert_allclose(loss, np.mean(eager**2), rtol=1e-4)
  expected = diffstride.diffstride_output_size(
      32, 32, tuple(_numpy(layer.strides).tolist()))
  assert layer.output_sizes()[(32, 32)] == expected
  # Strides moved by hand (no training step in between): still current.
  layer.strides.assign(np.array([3.3, 1.4], np.float32))
  np.testing.assert_allclose(model.predict(x, verbose=0), _numpy(model(x)),
                             rtol=1e-4, atol=1e-6)
  if jit:
    assert tracker.recompilations['predict'] >= 1


def test_steps_per_execution_is_refused_under_jit():
  if BACKEND == 'torch':
    pytest.skip('PyTorch reads the strides at every call.')
  model = _energy_model()
  sizes.track_sizes(model)
  model.compile(optimizer='adam', loss='mse', jit_compile=True,
                steps_per_execution=2)
  x, t = _data()
  with pytest.raises(ValueError, match='steps_per_execution=1'):
    model.fit(x, t, batch_size=4, epochs=1, verbose=0)


def _stateless_step(model, optimizer):
  """A JAX training step on explicit state (the stateless API)."""
  import jax  # pylint: disable=g-import-not-at-top

  def loss_fn(trainable, non_trainable, x, t):
    y, non_trainable = model.stateless_call(trainable, non_trainable, x)
    return ops.mean(ops.square(y - t)), non_trainable

  def step(trainable, non_trainable, opt_vars, x, t, sizes=None):
    del sizes  # Only a static argument: one trace per value.
    (loss, non_trainable), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(trainable, non_trainable, x, t)
    trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads,
                                                    trainable)
    return loss, trainable, non_trainable, opt_vars

  return step


def test_custom_training_loop():
  """Custom loops: eager, and compiled with the sizes as a static argument;
  they agree, and a compiled step that is not told the sizes refuses to
  compute with stale ones."""
  x, t = _data()
  steps = 10
  results = {}
  for compiled in (False, True):
    keras.utils.set_random_seed(0)
    model = _energy_model()
    layer = model.get_layer('ds')
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    losses, strides, seen = [], [], set()
    if BACKEND == 'tensorflow':
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      def step(x, t, sizes=None):
        del sizes
        with tf.GradientTape() as tape:
          loss = tf.reduce_mean(tf.square(model(x) - t))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

      fn = tf.function(step, jit_compile=True) if compiled else step
      for _ in range(steps):
        key = sizes.update_sizes(model) if compiled else None
        seen.add(key)
        losses.append(float(fn(x, t, sizes=key)))
        strides.append(_numpy(layer.strides).copy())
      if compiled:
        assert len(fn._list_all_concrete_functions()) == len(seen)  # pylint: disable=protected-access
    elif BACKEND == 'jax':
      import jax  # pylint: disable=g-import-not-at-top
      step = _stateless_step(model, optimizer)
      if compiled:
        step = jax.jit(step, static_argnames='sizes')
      state = ([v.value for v in model.trainable_variables],
               [v.value for v in model.non_trainable_variables],
               [v.value for v in optimizer.variables])
      for _ in range(steps):
        key = (sizes.update_sizes(model, trainable_variables=state[0])
               if compiled else None)
        seen.add(key)
        loss, *state = step(*state, x, t, sizes=key)
        losses.append(float(loss))
        index = [i for i, v in enumerate(model.trainable_variables)
                 if v is layer.strides][0]
        strides.append(np.asarray(state[0][index]).copy())
      for variable, value in zip(model.trainable_variables, state[0]):
        variable.assign(value)
    else:
      import torch  # pylint: disable=g-import-not-at-top
      for _ in range(steps):
        for v in model.trainable_variables:
          v.value.grad = None
        loss = torch.mean(torch.square(model(torch.tensor(x)) -
                                       torch.tensor(t)))
        loss.backward()
        optimizer.apply([v.value.grad for v in model.trainable_variables],
                        model.trainable_variables)
        losses.append(float(loss))
        strides.append(_numpy(layer.strides).copy())
    results[compiled] = (losses, strides, seen)
    if BACKEND == 'torch':
      break
  losses, strides, _ = results[False]
  keras.utils.set_random_seed(0)
  assert _size_changes(_numpy(_energy_model().get_layer('ds').strides),
                       strides) >= 1
  if True not in results:
    pytest.skip('the eager loop passed; the compiled one: '
                + _NOT_COMPILED_ON_TORCH)
  np.testing.assert_allclose(results[True][1], strides, rtol=1e-4)
  np.testing.assert_allclose(results[True][0], losses, rtol=1e-3, atol=1e-6)
  assert len(results[True][2]) >= 2  # One trace per distinct sizes.


def test_compiled_step_with_stale_sizes_does_not_silently_compute():
  """A compiled step that nothing keeps current is refused before it runs
  (TensorFlow's XLA, jax.jit), naming the fix. A step whose sizes were
  resolved once (`update_sizes`) but not passed again: JAX raises once the
  strides give another size; TensorFlow's XLA, which cannot raise, gives
  NaN."""
  if BACKEND == 'torch':
    pytest.skip('PyTorch reads the strides at every call: never stale.')
  x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype('f4')
  layer = diffstride.DiffStride(strides=(2.0, 2.0),
                                data_format='channels_last')
  layer.build(x.shape)
  if BACKEND == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    compile_fn = lambda: tf.function(layer, jit_compile=True)
    call = lambda fn: _numpy(fn(x))
  else:
    import jax  # pylint: disable=g-import-not-at-top
    compile_fn = lambda: jax.jit(
        lambda s, x: layer.stateless_call([s], [], x)[0])
    call = lambda fn: _numpy(fn(layer.strides.value, x))
  with pytest.raises(ValueError, match='track_sizes'):
    call(compile_fn())
  sizes.update_sizes(layer)  # Resolved once, then forgotten.
  fn = compile_fn()
  good = call(fn)
  assert good.shape == (2, 24, 24, 3) and np.all(np.isfinite(good))
  layer.strides.assign([2.6, 2.0])  # Another output size, same trace.
  if BACKEND == 'tensorflow':
    assert np.all(np.isnan(call(fn)))  # XLA cannot raise: NaN.
  else:
    with pytest.raises(Exception, match='update_sizes'):
      call(fn)


# ------------------------------------------------------------ models


# One method per way a ResNet places its downsampling
# (`diffstride.methods.placement_of`): strided convolutions; a layer after the
# convolution (DiffStride; FixedSpectralPooling, SpatialPooling and
# DCTDiffStride go the same way); after the activation (BlurPool; APS, whose
# shortcut reuses the main branch's choice). Each layer's own gradients:
# `test_layer_standard_checks`. The network is ResNet-18's layout (stem, an
# identity stage, three projecting stages at strides 1, 1, 2, 2, 2) with one
# narrow residual layer per stage: the same placements in half the graph
# that backends compile (tests/resnet_keras_test.py builds ResNet-18).
@pytest.mark.parametrize('pooling_cls', [None, pooling.DiffStride,
                                         diffstride.BlurPool,
                                         diffstride.PolyphasePooling],
                         ids=['conv', 'diffstride', 'blurpool', 'aps'])
def test_resnet_forward_and_gradients(pooling_cls):
  """Every weight of the ResNet gets a finite gradient through each way of
  placing the downsampling; DiffStride's strides a non-zero one."""
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([8, 8, 16, 16, 32], [1, 1, 2, 2, 2], id_only=[0],
                        num_layers=1, kernel_size=3, channels_first=False,
                        num_output_classes=10, pooling_cls=pooling_cls)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype('f4')
  labels = ops.one_hot(ops.convert_to_tensor(np.array([3, 7])), 10)
  loss_fn = lambda y: ops.sum(-labels * ops.log_softmax(y))
  # Under jax.jit on JAX (half the time of JAX's op-by-op eager mode, and
  # the mode JAX users train in); eager elsewhere.
  mode = 'jit' if BACKEND == 'jax' else 'eager'
  logits, dx, grads = layer_testing.forward_and_grads(model, x, loss_fn,
                                                      mode)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  assert np.all(np.isfinite(dx)) and np.any(dx != 0.0)
  assert len(grads) == len(model.trainable_weights)
  for weight, grad in zip(model.trainable_weights, grads):
    assert grad.shape == tuple(weight.shape), weight.path
    assert np.all(np.isfinite(grad)), weight.path
  if pooling_cls is pooling.DiffStride:
    layers = diffstride.diffstride_layers(model)
    assert len(layers) == 4
    assert sizes.size_tracker(model) is not None
    by_path = {w.path: g for w, g in zip(model.trainable_weights, grads)}
    for layer in layers:
      assert np.all(np.abs(by_path[layer.strides.path]) > 0), layer.name


def _circular_shift_spread(pooling_cls, pooling_kwargs=None):
  """(largest change of a circularly padded ResNet's logits over circular
  shifts of its input, in inference, the logits' scale); its compiled
  predictions match (TensorFlow, JAX)."""
  x = np.random.default_rng(11).standard_normal((2, 16, 16, 3)).astype('f4')
  shifts = [(dy, dx) for dy in range(0, 16, 3) for dx in range(0, 16, 5)]
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([8, 8, 16, 16], [2, 1, 2, 2], id_only=[0],
                        num_layers=1, kernel_size=3, channels_first=False,
                        num_output_classes=5, pooling_cls=pooling_cls,
                        pooling_kwargs=pooling_kwargs,
                        conv_padding='circular')
  batch = np.concatenate([np.roll(x, s, axis=(1, 2)) for s in shifts])
  logits = _numpy(model(batch, training=False)).reshape(len(shifts), 2, 5)
  if pooling_cls and BACKEND in ('tensorflow', 'jax'):
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(batch, verbose=0),
                               logits.reshape(-1, 5), rtol=1e-4, atol=1e-5)
  return (float(np.max(np.abs(logits - logits[:1]))),
          max(1.0, float(np.max(np.abs(logits)))))


def test_aps_resnet_logits_survive_every_circular_shift():
  """A circularly padded ResNet whose every downsampling is APS: the same
  logits (to float rounding) for every circular shift of its input, in
  inference and in the compiled mode; strided convolutions are not."""
  spread, scale = _circular_shift_spread('PolyphasePooling')
  assert spread <= 1e-5 * scale, spread
  spread, _ = _circular_shift_spread(None)
  assert spread > 1e-2, spread


def test_lps_resnet_logits_survive_every_circular_shift():
  """The same with LPS in inference (the hard choice of the learned
  logits; the stem and both projecting stages)."""
  spread, scale = _circular_shift_spread('LearnablePolyphasePooling',
                                         dict(hidden_channels=4))
  assert spread <= 1e-5 * scale, spread


def _small_resnet():
  return resnet.Resnet([8, 8, 16], [1, 1, 2], id_only=[0], num_layers=1,
                       kernel_size=3, channels_first=False,
                       num_output_classes=3, pooling_cls=pooling.DiffStride)


def test_resnet_fit_jit_save_load_and_predict(tmp_path):
  """A Resnet tracks its sizes itself; after load_model the sizes come from
  the loaded strides, not the config's initial ones."""
  jit = BACKEND in ('tensorflow', 'jax')
  keras.utils.set_random_seed(0)
  model = _small_resnet()
  model.compile(optimizer=keras.optimizers.Adam(0.05),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True), jit_compile=jit)
  rng = np.random.default_rng(5)
  x = rng.standard_normal((8, 32, 32, 3)).astype('f4')
  y = rng.integers(0, 3, size=(8,))
  model.fit(x, y, batch_size=4, epochs=1, verbose=0)
  layers = diffstride.diffstride_layers(model)
  for i, layer in enumerate(layers):  # Away from the config's strides.
    layer.strides.assign(_numpy(layer.strides) + 0.7 * (i + 1))
  expected = _numpy(model(x, training=False))
  np.testing.assert_allclose(model.predict(x, verbose=0), expected,
                             rtol=1e-4, atol=1e-5)
  path = str(tmp_path / 'resnet.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  for a, b in zip(layers, diffstride.diffstride_layers(loaded)):
    np.testing.assert_array_equal(_numpy(a.strides), _numpy(b.strides))
    for dims, size in a.output_sizes().items():
      assert b.output_size(dims) == size
      if dims == (32, 32):  # Not the sizes of the config's strides.
        assert size != diffstride.diffstride_output_size(
            *dims, b.get_config()['strides'])
  if jit:
    loaded.compile(loss='mse', jit_compile=True)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), expected,
                             rtol=1e-4, atol=1e-5)


def test_mel_frontend_matches_tensorflow_stft():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  samples = 4321
  t = np.arange(samples) / 16000.0
  x = np.stack([0.3 * np.sin(2 * np.pi * 440.0 * t) +
                0.05 * rng.standard_normal(samples),
                0.1 * rng.standard_normal(samples)]).astype(np.float32)
  layer = frontend_lib.MelFrontend()
  got = _numpy(layer(x))
  # The TensorFlow path, computed directly with tf.signal.
  stft = tf.signal.stft(tf.constant(x), frame_length=layer.window_length,
                        frame_step=layer.hop_length,
                        fft_length=layer.fft_length, pad_end=True)
  power = tf.square(tf.abs(stft)).numpy()
  expected = np.log(power @ layer.mel_matrix + layer.log_offset)
  assert got.shape == expected.shape == (2, layer.num_frames(samples), 40)
  np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-4)


def test_audio_classifier_forward_and_fit():
  keras.utils.set_random_seed(0)
  backbone = resnet.Resnet([8, 8, 16], [1, 1, (2, 2)], id_only=[0],
                           num_layers=1, kernel_size=3, channels_first=False,
                           num_output_classes=4,
                           pooling_cls=pooling.DiffStride)
  model = diffstride.AudioClassifier(
      backbone=backbone,
      frontend=frontend_lib.MelFrontend(spec_augment=True, seed=1),
      window_samples=3200)
  rng = np.random.default_rng(7)
  waves = rng.standard_normal((4, 3200)).astype('f4') * 0.1
  logits = _numpy(model(waves))
  assert logits.shape == (4, 4) and np.all(np.isfinite(logits))
  # Two windows, the second one zero: the same logits as the first alone.
  padded = np.concatenate([waves, np.zeros_like(waves)], axis=1)
  np.testing.assert_allclose(_numpy(model(padded)), logits, rtol=1e-4,
                             atol=1e-5)
  model.compile(optimizer=keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                jit_compile=BACKEND in ('tensorflow', 'jax'))
  before = [_numpy(l.strides).copy()
            for l in diffstride.diffstride_layers(model)]
  history = model.fit(waves, np.arange(4) % 4, batch_size=2, epochs=1,
                      verbose=0)
  assert np.all(np.isfinite(history.history['loss']))
  after = [_numpy(l.strides) for l in diffstride.diffstride_layers(model)]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


# ------------------------------------------------------------ cross-backend


def _artifact_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((32, 32, 3))
  y = keras.layers.Conv2D(4, 3, padding='same')(inputs)
  y = diffstride.DiffStride(strides=(2.0, 2.5), data_format='channels_last',
                            name='ds')(y)
  y = diffstride.FixedSpectralPooling(strides=1.5,
                                      data_format='channels_last')(y)
  y = keras.layers.Conv2D(4, 3, padding='same')(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  return keras.Model(inputs, keras.layers.Dense(3)(y))


def _artifact_input():
  return np.random.default_rng(8).standard_normal((2, 32, 32, 3)).astype('f4')


@pytest.mark.skipif(not _ARTIFACTS, reason='run by backends_test.py')
def test_save_artifacts():
  model = _artifact_model()
  model.get_layer('ds').strides.assign([2.9, 1.7])  # As if trained.
  model.save(os.path.join(_ARTIFACTS, f'{BACKEND}.keras'))
  np.save(os.path.join(_ARTIFACTS, f'{BACKEND}_output.npy'),
          _numpy(model(_artifact_input())))


@pytest.mark.skipif(not _ARTIFACTS, reason='run by backends_test.py')
def test_load_artifacts_of_other_backends():
  """Loads what the other backends saved so far; leaves a marker per pair."""
  for other in ('tensorflow', 'jax', 'torch'):
    path = os.path.join(_ARTIFACTS, f'{other}.keras')
    if other == BACKEND or not os.path.exists(path):
      continue
    model = keras.models.load_model(path)
    np.testing.assert_allclose(_numpy(model.get_layer('ds').strides),
                               [2.9, 1.7], rtol=1e-6)
    expected = np.load(os.path.join(_ARTIFACTS, f'{other}_output.npy'))
    np.testing.assert_allclose(_numpy(model(_artifact_input())), expected,
                               rtol=1e-4, atol=1e-5)
    with open(os.path.join(_ARTIFACTS, f'{other}_to_{BACKEND}.ok'), 'w'):
      pass
