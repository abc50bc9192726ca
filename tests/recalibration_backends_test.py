"""BatchNorm recalibration on JAX and PyTorch, without TensorFlow.

Keras picks its backend once, at import: each backend runs `_SCRIPT` in a
fresh Python process with `KERAS_BACKEND` set and TensorFlow made
unimportable (`sys.modules['tensorflow'] = None`). The script trains a small
version of the digits tutorial's network (examples/digits.py: Conv-BN-ReLU
with two DiffStride layers, on scikit-learn's digits upsampled to 16 x 16)
with BatchNormalization's default momentum 0.99, whose moving statistics are
still far from the network's after a short training (the tutorial's
"warm-up effect"): inference-mode accuracy near chance. Then it checks that
`recalibrate_batch_norm` recovers the accuracy, that the statistics it sets
are the per-batch moments averaged by hand in NumPy, that NumPy arrays, a
generator of batches and a `keras.utils.PyDataset` give the same statistics,
and that `BatchNormRecalibration` inside `fit` leaves recalibrated statistics
in the model that is then evaluated, saved and reloaded (on JAX `fit` keeps
the training state outside the variables: a lost assignment would show
there). `_QUICK_SCRIPT` (not marked slow) checks the statistics against
NumPy for the three kinds of data, and after a `fit` with the callback, on a
small Dense-BN model.
"""

import json

import pytest

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order


_SCRIPT = r'''
import sys
sys.modules['tensorflow'] = None  # Any TensorFlow import now fails.

import json
import os
import tempfile

import keras
import numpy as np
from sklearn import datasets

import diffstride
from diffstride.recalibration import BatchNormRecalibration
from diffstride.recalibration import recalibrate_batch_norm

BACKEND = keras.backend.backend()
assert BACKEND == os.environ['KERAS_BACKEND'], BACKEND
BATCH = 64

# The tutorial's data at half its resolution: 8 x 8 digits, each pixel
# repeated 2 x 2 -> [1797, 16, 16, 1] in [0, 1]; 1,400 train, 397 test.
digits = datasets.load_digits()
x = (np.kron(digits.images, np.ones((2, 2)))[..., None] / 16.0).astype(
    'float32')
y = digits.target.astype('int32')
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

# The tutorial's network with a third of its filters.
keras.utils.set_random_seed(0)
inputs = keras.Input((16, 16, 1))
h = inputs
convs, norms, pools = [], [], []
for i, filters in enumerate((8, 16, 32)):
  convs.append(keras.layers.Conv2D(filters, 3, padding='same'))
  norms.append(keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3,
                                               name=f'bn{i}'))
  h = keras.layers.ReLU()(norms[-1](convs[-1](h)))
  if i < 2:
    pools.append(diffstride.DiffStride(strides=(2.0, 2.0) if i == 0
                                       else (3.0, 3.0),
                                       data_format='channels_last'))
    h = pools[-1](h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(inputs, keras.layers.Dense(10)(h))
diffstride.track_sizes(model)  # fit is jitted on JAX.
model.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(
                  from_logits=True),
              metrics=['accuracy'])
history = model.fit(x_train, y_train, batch_size=BATCH, epochs=3, verbose=0)


def stats():
  return [np.concatenate([b.moving_mean.numpy(), b.moving_variance.numpy()])
          for b in norms]


def set_stats(values):
  for b, v in zip(norms, values):
    b.moving_mean.assign(v[:len(v) // 2])
    b.moving_variance.assign(v[len(v) // 2:])


def max_rel(a, b):
  # Largest difference between two lists of arrays, relative to the scale
  # (max |value|) of each array of b.
  return max(float(np.max(np.abs(u - v)) / np.max(np.abs(v)))
             for u, v in zip(a, b))


def accuracy(m=model):
  return float(m.evaluate(x_test, y_test, batch_size=BATCH, verbose=0)[1])


stale = stats()
stale_accuracy = accuracy()

# NumPy arrays (x, y): 21 batches of 64, the last 56 images dropped.
result = recalibrate_batch_norm(model, (x_train, y_train), batch_size=BATCH)
arrays = stats()
recalibrated_accuracy = accuracy()

# By hand: the first two BN layers' inputs from the model's own layers,
# moments, normalisation with them and ReLU in NumPy (float64).
def np_moments(a):
  a = np.asarray(a, np.float64)
  return a.mean(axis=(0, 1, 2)), a.var(axis=(0, 1, 2))

by_hand = [[], []]
for i in range(21):
  batch = x_train[i * BATCH:(i + 1) * BATCH]
  a1 = keras.ops.convert_to_numpy(convs[0](batch))
  m1, v1 = np_moments(a1)
  h1 = np.maximum((a1 - m1) / np.sqrt(v1 + 1e-3) * norms[0].gamma.numpy()
                  + norms[0].beta.numpy(), 0.0).astype('float32')
  a2 = keras.ops.convert_to_numpy(convs[1](pools[0](h1)))
  by_hand[0].append(np.concatenate([m1, v1]))
  by_hand[1].append(np.concatenate(np_moments(a2)))
by_hand = [np.mean(s, axis=0) for s in by_hand]


def generator():
  for i in range(0, 1344, BATCH):
    yield x_train[i:i + BATCH], y_train[i:i + BATCH]


class Batches(keras.utils.PyDataset):

  def __init__(self):
    super().__init__()

  def __len__(self):
    return 1400 // BATCH

  def __getitem__(self, i):
    s = slice(i * BATCH, (i + 1) * BATCH)
    return x_train[s], y_train[s]


kinds = {}
for kind, data in (('generator', generator()), ('PyDataset', Batches())):
  set_stats(stale)
  r = recalibrate_batch_norm(model, data, batch_size=BATCH)
  kinds[kind] = dict(batches=[r.num_batches, r.num_examples],
                     max_rel=max_rel(stats(), arrays))

errors = {}
for name, call in (('int', lambda: recalibrate_batch_norm(model, 3)),
                   ('one-shot', lambda: BatchNormRecalibration(generator()))):
  try:
    call()
  except ValueError as e:
    errors[name] = str(e)


# One more epoch with the callback: recalibrated before the validation and
# at the end of fit.
class Probe(keras.callbacks.Callback):

  def on_epoch_end(self, epoch, logs=None):
    self.at_epoch_end = stats()

callback = BatchNormRecalibration((x_train, y_train), batch_size=BATCH,
                                  before_validation=True)
probe = Probe()
set_stats(stale)
fit = model.fit(x_train, y_train, batch_size=BATCH, epochs=1, verbose=0,
                validation_data=(x_test, y_test),
                callbacks=[callback, probe])
after_fit = stats()
after_fit_accuracy = accuracy()
path = os.path.join(tempfile.mkdtemp(), 'digits.keras')
model.save(path)
loaded = keras.models.load_model(path)
loaded_stats = [np.concatenate([b.moving_mean.numpy(),
                                b.moving_variance.numpy()])
                for b in loaded.layers
                if isinstance(b, keras.layers.BatchNormalization)]
outputs = [keras.ops.convert_to_numpy(m(x_test[:BATCH], training=False))
           for m in (model, loaded)]
# Recalibrating the fitted model again changes nothing iff the callback's
# statistics are in it.
recalibrate_batch_norm(model, x_train, batch_size=BATCH)

print('RESULT ' + json.dumps({
    'backend': BACKEND,
    'tensorflow': repr(sys.modules.get('tensorflow')),
    'tensorflow_modules': sorted(m for m in sys.modules
                                 if m.startswith('tensorflow.')),
    'train_accuracy': history.history['accuracy'][-1],
    'stale_accuracy': stale_accuracy,
    'recalibrated_accuracy': recalibrated_accuracy,
    'result': [result.num_batches, result.num_examples, list(result.layers)],
    'stale_vs_recalibrated': max_rel(stale, arrays),
    'by_hand_max_rel': max_rel(arrays[:2], by_hand),
    'kinds': kinds,
    'errors': errors,
    'when': [w for w, _ in callback.results],
    'val_accuracy': fit.history['val_accuracy'][-1],
    'after_fit_accuracy': after_fit_accuracy,
    'loaded_outputs_max_abs': float(np.max(np.abs(outputs[0] - outputs[1]))),
    'epoch_end_vs_after_fit': max_rel(probe.at_epoch_end, after_fit),
    'after_fit_vs_stale': max_rel(after_fit, stale),
    'after_fit_vs_arrays': max_rel(after_fit, arrays),
    'loaded_vs_after_fit': max_rel(loaded_stats, after_fit),
    'again_vs_after_fit': max_rel(stats(), after_fit),
}))
'''

_QUICK_SCRIPT = r'''
import sys
sys.modules['tensorflow'] = None  # Any TensorFlow import now fails.

import json

import keras
import numpy as np

from diffstride import recalibration

BN = keras.layers.BatchNormalization
keras.utils.set_random_seed(1)
inputs = keras.Input((6, 5))
dense = keras.layers.Dense(5)
bn_a = BN(axis=1, momentum=0.5, name='a')  # Channels on axis 1 of [B, 6, 5].
bn_b = BN(momentum=0.5, name='b')  # On the last axis.
model = keras.Model(inputs, keras.layers.Dense(2)(bn_b(bn_a(dense(inputs)))))
model.compile(optimizer=keras.optimizers.SGD(0.1), loss='mse')
rng = np.random.default_rng(1)
x = rng.normal(2.0, 3.0, (40, 6, 5)).astype('float32')
t = rng.normal(size=(40, 6, 2)).astype('float32')


def stats():
  return [np.concatenate([b.moving_mean.numpy(), b.moving_variance.numpy()])
          for b in (bn_a, bn_b)]


def by_hand(batches):
  # Per-batch moments of both BN inputs, averaged (NumPy, float64).
  out = [[], []]
  for batch in batches:
    d = np.asarray(keras.ops.convert_to_numpy(dense(batch)), np.float64)
    m, v = d.mean(axis=(0, 2)), d.var(axis=(0, 2))
    out[0].append(np.concatenate([m, v]))
    n = ((d - m[:, None]) / np.sqrt(v[:, None] + bn_a.epsilon)
         * bn_a.gamma.numpy()[:, None] + bn_a.beta.numpy()[:, None])
    out[1].append(np.concatenate([n.mean(axis=(0, 1)), n.var(axis=(0, 1))]))
  return [np.mean(o, axis=0) for o in out]


def max_diff(a, b):
  return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


class Batches(keras.utils.PyDataset):

  def __init__(self):
    super().__init__()

  def __len__(self):
    return 2

  def __getitem__(self, i):
    return x[i * 20:(i + 1) * 20], t[i * 20:(i + 1) * 20]


reference = by_hand([x[:20], x[20:]])
kinds = {}
for kind, data in (('arrays', (x, t)),
                   ('generator', (x[i:i + 20] for i in (0, 20))),
                   ('PyDataset', Batches())):
  for b in (bn_a, bn_b):
    b.moving_mean.assign(np.full(b.moving_mean.shape, 7.0, 'float32'))
  result = recalibration.recalibrate_batch_norm(model, data, batch_size=20)
  kinds[kind] = [result.num_batches, max_diff(stats(), reference)]

# In fit (on JAX the training state lives outside the variables there).
callback = recalibration.BatchNormRecalibration(x, batch_size=20)
model.fit(x, t, batch_size=20, epochs=2, verbose=0, callbacks=[callback])
after_fit = stats()
print('RESULT ' + json.dumps({
    'backend': keras.backend.backend(),
    'tensorflow': repr(sys.modules.get('tensorflow')),
    'kinds': kinds,
    'when': [w for w, _ in callback.results],
    'fit_vs_by_hand': max_diff(after_fit, by_hand([x[:20], x[20:]])),
    'fit_vs_before': max_diff(after_fit, reference),
}))
'''


@pytest.mark.parametrize('backend', ['jax', 'torch'])
def test_small_model_without_tensorflow(backend):
  r = subprocess_testing.run_backend_script(_QUICK_SCRIPT, backend)
  output = json.dumps(r)
  assert r['backend'] == backend, output
  assert r['tensorflow'] == 'None', output
  for kind in ('arrays', 'generator', 'PyDataset'):
    assert r['kinds'][kind][0] == 2, (kind, output)
    assert r['kinds'][kind][1] < 1e-5, (kind, output)
  assert r['when'] == ['train_end'], output
  # After fit: the statistics of the trained weights, as computed by hand,
  # not an EMA (momentum 0.5) ...
  assert r['fit_vs_by_hand'] < 1e-5, output
  # ... and the weights did move.
  assert r['fit_vs_before'] > 1e-2, output


@pytest.mark.slow  # 20-40 s each on two shared cores.
@pytest.mark.parametrize('backend', ['jax', 'torch'])
def test_digits_without_tensorflow(backend):
  pytest.importorskip('sklearn')
  r = subprocess_testing.run_backend_script(_SCRIPT, backend)
  output = json.dumps(r)
  assert r['backend'] == backend, output
  assert r['tensorflow'] == 'None' and not r['tensorflow_modules'], output
  # Trained, but the moving statistics (momentum 0.99, 66 steps) are stale:
  # inference-mode accuracy near chance (0.1) ...
  assert r['train_accuracy'] > 0.7, output
  assert r['stale_accuracy'] < 0.4, output
  # ... recovered by recalibration.
  assert r['result'] == [21, 1344, ['bn0', 'bn1', 'bn2']], output
  assert r['recalibrated_accuracy'] > 0.75, output
  assert r['recalibrated_accuracy'] > r['stale_accuracy'] + 0.4, output
  assert r['stale_vs_recalibrated'] > 0.1, output
  # The definition: per-batch moments averaged with equal weights.
  assert r['by_hand_max_rel'] < 1e-4, output
  # Every kind of data gives the same statistics.
  for kind in ('generator', 'PyDataset'):
    assert r['kinds'][kind]['batches'] == [21, 1344], (kind, output)
    assert r['kinds'][kind]['max_rel'] < 1e-6, (kind, output)
  assert 'must be arrays' in r['errors']['int'], output
  assert 'one-shot' in r['errors']['one-shot'], output
  # The callback in fit: recalibrated before the validation and at the end,
  # and those statistics are the ones the model evaluates, saves and
  # reloads (the validation in fit saw them too).
  assert r['when'] == ['validation, epoch 0', 'train_end'], output
  assert r['epoch_end_vs_after_fit'] < 1e-6, output
  assert r['again_vs_after_fit'] < 1e-6, output
  assert r['loaded_vs_after_fit'] == 0.0, output
  assert r['after_fit_vs_stale'] > 0.1, output
  assert r['after_fit_vs_arrays'] > 1e-4, output  # The weights moved.
  assert r['after_fit_accuracy'] > 0.75, output
  assert r['loaded_outputs_max_abs'] < 1e-5, output
  assert abs(r['val_accuracy'] - r['after_fit_accuracy']) <= 1.5 / 397, output
