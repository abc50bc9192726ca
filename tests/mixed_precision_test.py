"""The layers under Keras mixed-precision policies."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride

# Unit roundoff of the compute dtype. Keras casts the layer's float32 input to
# the compute dtype (relative error <= u per element) and the layer casts its
# float32 result back to it (another u). The layer is linear with a
# well-conditioned operator (a windowed projection of the spectrum, norm <= 1
# per frequency), so the output error relative to the largest output is a few
# u; 4 u leaves margin yet is far below any real error (a dropped bin or a
# half-precision DFT of a 32x32 map is off by >1e-1 relative).
_UNIT_ROUNDOFF = {'mixed_float16': 2.0**-11, 'mixed_bfloat16': 2.0**-8}
_COMPUTE_DTYPE = {'mixed_float16': tf.float16, 'mixed_bfloat16': tf.bfloat16}


@pytest.fixture(params=['mixed_float16', 'mixed_bfloat16'])
def policy(request):
  keras.mixed_precision.set_dtype_policy(request.param)
  request.addfinalizer(
      lambda: keras.mixed_precision.set_dtype_policy('float32'))
  return request.param


def _random(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _float32_reference(make, x):
  """The layer's output under the float32 policy, whatever the global one."""
  layer = make(dtype='float32')
  return layer(x).numpy()


_LAYERS = [
    ('DiffStride', lambda **kw: diffstride.DiffStride(
        strides=(2.0, 2.5), data_format='channels_last', **kw)),
    ('DiffStride_shared_cf', lambda **kw: diffstride.DiffStride(
        strides=3.0, shared_stride=True, data_format='channels_first', **kw)),
    ('DiffStride_fft', lambda **kw: diffstride.DiffStride(
        strides=(1.5, 2.0), data_format='channels_last', implementation='fft',
        **kw)),
    ('FixedSpectralPooling', lambda **kw: diffstride.FixedSpectralPooling(
        strides=(2.0, 1.5), data_format='channels_last', **kw)),
]


@pytest.mark.parametrize('make', [m for _, m in _LAYERS],
                         ids=[n for n, _ in _LAYERS])
def test_output_dtype_and_accuracy(policy, make):
  layer = make()
  channels_first = layer.data_format == 'channels_first'
  x = _random((2, 3, 32, 32) if channels_first else (2, 32, 32, 3))
  assert layer.compute_dtype == _COMPUTE_DTYPE[policy].name
  y = layer(x)
  assert y.dtype == _COMPUTE_DTYPE[policy]
  # Half-precision inputs are accepted too and give the same thing.
  y_half = layer(tf.cast(x, _COMPUTE_DTYPE[policy]))
  assert y_half.dtype == _COMPUTE_DTYPE[policy]
  np.testing.assert_array_equal(tf.cast(y_half, tf.float32),
                                tf.cast(y, tf.float32))
  if isinstance(layer, diffstride.DiffStride):
    assert layer.strides.dtype == 'float32'
  y = tf.cast(y, tf.float32).numpy()
  assert np.all(np.isfinite(y))
  reference = _float32_reference(make, x)
  assert y.shape == reference.shape
  error = np.max(np.abs(y - reference)) / np.max(np.abs(reference))
  assert error < 4 * _UNIT_ROUNDOFF[policy], error


def test_large_values_do_not_overflow_float16(policy):
  # The DC bin of a 64x64 map of values ~1e3 is ~4e6, far above float16's
  # 65504: it must be computed in float32, and only the output (~1e3) cast.
  x = 1000.0 + _random((1, 64, 64, 2))
  layer = diffstride.DiffStride(strides=(2.0, 2.0), data_format='channels_last')
  y = tf.cast(layer(x), tf.float32).numpy()
  assert np.all(np.isfinite(y))
  reference = diffstride.DiffStride(strides=(2.0, 2.0),
                                    data_format='channels_last',
                                    dtype='float32')(x).numpy()
  error = np.max(np.abs(y - reference)) / np.max(np.abs(reference))
  assert error < 4 * _UNIT_ROUNDOFF[policy], error


def _small_model():
  inputs = keras.Input((32, 32, 3))
  y = keras.layers.Conv2D(4, 3, padding='same')(inputs)
  y = diffstride.DiffStride(strides=(2.0, 2.5), data_format='channels_last',
                            name='ds')(y)
  y = keras.layers.Conv2D(4, 3, padding='same')(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  # Final layer in float32, as the mixed-precision guide recommends.
  return keras.Model(inputs, keras.layers.Dense(2, dtype='float32')(y))


def test_training_step_moves_strides(policy):
  keras.utils.set_random_seed(0)
  model = _small_model()
  layer = model.get_layer('ds')
  assert layer.compute_dtype == _COMPUTE_DTYPE[policy].name
  assert layer.strides.dtype == 'float32'
  optimizer = keras.optimizers.SGD(learning_rate=0.1)
  if policy == 'mixed_float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  x = _random((4, 32, 32, 3), seed=1)
  target = _random((4, 2), seed=2)
  before = layer.strides.numpy().copy()
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(x) - target))
    scaled = optimizer.scale_loss(loss)
  grads = tape.gradient(scaled, model.trainable_variables)
  index = [i for i, v in enumerate(model.trainable_variables)
           if v is layer.strides]
  assert len(index) == 1
  stride_grad = grads[index[0]]
  assert stride_grad.dtype == tf.float32
  assert np.all(np.isfinite(stride_grad.numpy()))
  assert np.all(stride_grad.numpy() != 0), stride_grad
  optimizer.apply(grads, model.trainable_variables)
  after = layer.strides.numpy()
  assert np.all(np.isfinite(after))
  assert np.all(after != before), (before, after)
  assert layer.strides.dtype == 'float32'


def test_fit_moves_strides(policy):
  keras.utils.set_random_seed(3)
  model = _small_model()
  layer = model.get_layer('ds')
  optimizer = keras.optimizers.Adam(0.05)
  if policy == 'mixed_float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  model.compile(optimizer=optimizer, loss='mse')
  before = layer.strides.numpy().copy()
  history = model.fit(_random((8, 32, 32, 3), seed=4), _random((8, 2), seed=5),
                      epochs=2, batch_size=4, verbose=0)
  assert np.all(np.isfinite(history.history['loss']))
  after = layer.strides.numpy()
  assert np.all(np.isfinite(after)) and np.all(after != before)


@pytest.fixture
def float32_after_policy():
  """Requested before `policy`, so set up before it and torn down after it
  (pytest tears fixtures down in reverse order): checks that `policy`'s
  teardown put the float32 policy back."""
  yield
  assert keras.mixed_precision.dtype_policy().name == 'float32'


def test_fixture_restores_float32(float32_after_policy, policy):
  # The fixture did set the mixed policy, for new layers too...
  assert keras.mixed_precision.dtype_policy().name == policy
  layer = diffstride.DiffStride()
  assert layer.compute_dtype == _COMPUTE_DTYPE[policy].name
  assert layer.variable_dtype == 'float32'
  # ...and `float32_after_policy` checks, at teardown, that it is undone.
