"""The complexity penalty and the stride export on JAX and PyTorch, without
TensorFlow.

Keras picks its backend once, at import: each backend runs `_SCRIPT` in a
fresh Python process with `KERAS_BACKEND` set and TensorFlow made
unimportable (`sys.modules['tensorflow'] = None`). The script checks, on a
small DiffStride ResNet: the penalty's three forms and their stride
gradients (that backend's autodiff) against NumPy; two compiled `fit` steps
with the penalty added to the loss against the NumPy stride updates; the
convolution MMACs against the map sizes the network produces; the three
exports' strides, copied weights, map sizes, logits and MMACs; a `.keras`
round trip of each export; and that with a hard mask the size-matched export
computes the DiffStride model's function.
"""

import json

import pytest

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order


_SCRIPT = r'''
import sys
sys.modules['tensorflow'] = None  # Any TensorFlow import now fails.

import json
import math
import os
import tempfile

import keras
from keras import ops
import numpy as np

from diffstride import complexity
from diffstride import export
from diffstride import pooling
from diffstride import resnet
from diffstride.strides import stride_pair

BACKEND = keras.backend.backend()
assert BACKEND == os.environ['KERAS_BACKEND'], BACKEND
SIZE = 32
# Stem, stage 1, stage 2 strides (height, width), set by hand.
STRIDES = np.array([(1.2, 1.5), (2.0, 3.0), (2.5, 1.5)], np.float32)
# The convolutions of `small_resnet` by the resolution they run at (see
# tests/complexity_test.py): stage 1 (after the stem's pooling): stage 1's
# 3x3 4->8 and 1x1 4->8 shortcut, which run before its pooling; stage 2: its
# 3x3 8->8, stage 2's 3x3 8->16 and 1x1 8->16; stage 3: the 3x3 16->16.
COSTS = {'compute': [9 * 4 * 8 + 4 * 8,
                     9 * 8 * 8 + 9 * 8 * 16 + 8 * 16, 9 * 16 * 16],
         'memory': [8 + 8, 8 + 16 + 16, 16]}
# MACs per output position of the convolutions at each of the four map
# sizes: the input (stem conv 3->4), then the three stages as above.
MACS = [9 * 3 * 4] + COSTS['compute']
LAMBDA, LR = 1e5, 1e-6


def numpy(x):
  return np.asarray(ops.convert_to_numpy(x))


def small_resnet(smoothness_factor=4.0):
  """Stem conv 3->4, then two projecting stages 4->8 and 8->16."""
  keras.utils.set_random_seed(0)
  model = resnet.Resnet([4, 8, 16], [1, 2, 2], num_output_classes=3,
                        num_layers=1, kernel_size=3, channels_first=False,
                        pooling_cls=pooling.DiffStride,
                        pooling_kwargs={'smoothness_factor': smoothness_factor})
  model.build((None, SIZE, SIZE, 3))
  return model


def diffstride_layers(model):
  """The stem's DiffStride, then each stage's, from the model's structure."""
  positions = model.downsampling_positions()
  layers = [positions[i] for i in sorted(positions)]
  assert len(layers) == 3 and all(
      isinstance(l, pooling.DiffStride) for l in layers), layers
  return layers


def set_strides(model, values):
  for layer, value in zip(diffstride_layers(model), values):
    layer.strides.assign(np.asarray(value, np.float32))


def expected_penalty(strides, form):
  """NumPy: the penalty and its gradient [L, 2] in (S_h, S_w)."""
  strides = np.asarray(strides, np.float64)
  sizes = np.cumprod(1.0 / strides.prod(axis=1))  # r_l.
  weights = np.ones(3)
  if form != 'paper':
    costs = np.asarray(COSTS[form], np.float64)
    weights = 3 * costs / costs.sum()
  terms = weights * sizes
  # d r_l / d S^k = -r_l / S^k for every l >= k.
  tail = np.cumsum(terms[::-1])[::-1]
  return terms.sum(), -tail[:, None] / strides


def penalty_and_gradients(model, form):
  """The penalty and its gradients in the stride variables, by this
  backend's autodiff."""
  variables = [layer.strides for layer in diffstride_layers(model)]
  if BACKEND == 'jax':
    import jax
    def penalty_of(values):
      with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        return complexity.complexity_penalty(model, form)
    value, grads = jax.value_and_grad(penalty_of)(
        [v.value for v in variables])
  else:
    import torch
    value = complexity.complexity_penalty(model, form)
    grads = torch.autograd.grad(value, [v.value for v in variables])
  return float(numpy(value)), np.stack([numpy(g) for g in grads])


def map_sizes(model, x):
  """(h, w) of the maps after the stem and after each stage, read from the
  shapes the layers' `call` gives (on JAX traced abstractly, as `jax.jit`
  traces them, so that no op is compiled for it)."""
  sizes = []
  def run(x):
    for layer in model.stack:
      if isinstance(layer, (keras.layers.BatchNormalization,
                            resnet.ResnetBlock)):
        x = layer(x, training=False)
      else:
        x = layer(x)
      if (isinstance(layer, resnet.ResnetBlock) or
          layer is model.downsampling_positions().get(0) or
          (layer is model.stem_conv and model.pooling_cls is None)):
        sizes.append(tuple(int(d) for d in x.shape[1:3]))
    return x
  if BACKEND == 'jax':
    import jax
    jax.eval_shape(run, jax.ShapeDtypeStruct(x.shape, x.dtype))
  else:
    run(ops.convert_to_tensor(x))
  return sizes


def logits(model, x):
  """[B, 3] logits at inference, from one compiled `predict` step."""
  return numpy(model.predict(x, batch_size=len(x), verbose=0))


def structural_weights(model):
  """{structural name: NumPy value} of the convolutions, batch norms and
  head, named by where they sit in the network, not by weight order."""
  named = {}
  def add(prefix, layer):
    for w in layer.weights:
      named[prefix + '/' + w.name] = numpy(w.value)
  add('stem', model.stem_conv)
  blocks = [l for l in model.stack if isinstance(l, resnet.ResnetBlock)]
  add('stem_bn', next(l for l in model.stack
                      if isinstance(l, keras.layers.BatchNormalization)))
  add('head', next(l for l in model.stack
                   if isinstance(l, keras.layers.Dense)))
  for i, block in enumerate(blocks):
    for j, res in enumerate(block.layers):
      for attr in ('strided_conv', 'bn1', 'unstrided_conv', 'bn2',
                   'shortcut_conv', 'shortcut_bn'):
        add(f'block{i}/layer{j}/{attr}', getattr(res, attr))
  return named


result = {'backend': BACKEND}
rng = np.random.default_rng(0)
x = rng.normal(size=(8, SIZE, SIZE, 3)).astype(np.float32)
y = np.array([0, 1, 2, 0, 1, 2, 0, 1])

# 1. The penalty and its stride gradient against NumPy, every form.
model = small_resnet()
set_strides(model, STRIDES)
stages = complexity.network_stages(model)
assert [s.compute for s in stages[1:]] == COSTS['compute'], stages
assert [s.memory for s in stages[1:]] == COSTS['memory'], stages
for form in complexity.FORMS:
  value, grads = penalty_and_gradients(model, form)
  want, want_grads = expected_penalty(STRIDES, form)
  np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=form)
  np.testing.assert_allclose(grads, want_grads, rtol=1e-5, err_msg=form)
  assert np.all(grads < 0), (form, grads)
result['penalty'] = value

# 2. Two SGD steps of `fit` with the penalty added to the cross-entropy
# (`attach_regularizer`). LAMBDA is large and LR small: the penalty moves the
# strides by LR * LAMBDA = 0.1 times its gradient, the cross-entropy by
# LR = 1e-6 times its own, so each step's stride update is the NumPy one to
# about 1e-6 (a penalty counted twice, or without gradient, is off by 1e-3
# and more).
losses_before = sum(float(numpy(l)) for l in model.losses)  # L2 decay.
complexity.attach_regularizer(model, LAMBDA)
added = sum(float(numpy(l)) for l in model.losses) - losses_before
np.testing.assert_allclose(
    added, LAMBDA * expected_penalty(STRIDES, 'paper')[0], rtol=1e-5)
model.compile(optimizer=keras.optimizers.SGD(LR),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
want, penalties = [np.asarray(STRIDES, np.float64)], []
for _ in range(2):
  penalty, grads = expected_penalty(want[-1], 'paper')
  penalties.append(penalty)
  want.append(want[-1] - LR * LAMBDA * grads)
after = np.stack([numpy(l.strides) for l in diffstride_layers(model)])
np.testing.assert_allclose(after - STRIDES, want[-1] - STRIDES, rtol=1e-3,
                           atol=1e-5)
assert np.all(after > STRIDES + 1e-3), after
# The logged loss: the mean over the two steps of LAMBDA * penalty (about
# 5e4) plus the cross-entropy and the L2 decay (a few units), so the penalty
# enters it once.
extra = history.history['loss'][0] - LAMBDA * np.mean(penalties)
assert 0 < extra < 10, (history.history, LAMBDA * np.mean(penalties))
result['strides'] = after.tolist()

# 3. Conv MMACs at the real map sizes: those DiffStride gives at the trained
# strides, which are those the network produces.
sizes = []
h, w = SIZE, SIZE
for layer in diffstride_layers(model):
  h, w = pooling.diffstride_output_size(h, w, stride_pair(layer.strides))
  sizes.append((h, w))
assert map_sizes(model, x) == sizes, (map_sizes(model, x), sizes)
want_macs = sum(m * a * b for m, (a, b) in zip(MACS, [(SIZE, SIZE)] + sizes))
values = complexity.complexity_values(model, (SIZE, SIZE))
assert values['conv_mmacs'] == want_macs / 1e6, (values, want_macs)
np.testing.assert_allclose(values['strides'], after, rtol=1e-6)
np.testing.assert_allclose(values['paper'], expected_penalty(after, 'paper')[0],
                           rtol=1e-6)
result['conv_mmacs'] = values['conv_mmacs']

# 4. The exports of the trained model: strides, map sizes, copied weights,
# logits, and a .keras round trip.
source_weights = structural_weights(model)
# Stem conv kernel, 4 stem BN weights, head kernel and bias; per residual
# layer 3 kernels (no biases) and 3 BNs of 4.
assert len(source_weights) == 1 + 4 + 2 + 2 * (3 + 3 * 4), sorted(
    source_weights)
# Every stride is above its floor N / (N - R) (at most 32 / 28), so the
# strides DiffStride applies are the trained ones.
assert after.min() > SIZE / (SIZE - 4.0), after
applied = after
directory = tempfile.mkdtemp()
for mode in export.MODES:
  exported = export.export_model(model, mode, (SIZE, SIZE))
  got = structural_weights(exported)
  assert sorted(got) == sorted(source_weights), (mode, sorted(got))
  for name, value in source_weights.items():
    np.testing.assert_array_equal(got[name], value, err_msg=f'{mode} {name}')
  if mode == 'fixed_spectral':
    want, (h, w) = [], (SIZE, SIZE)
    for s_h, s_w in applied:  # max(floor(H / S) rounded down to even, 2).
      h = max(int(np.floor(np.float32(h) / np.float32(s_h))) // 2 * 2, 2)
      w = max(int(np.floor(np.float32(w) / np.float32(s_w))), 2)
      want.append((h, w))
    fixed = [exported.downsampling_positions()[i] for i in range(3)]
    assert all(isinstance(l, pooling.FixedSpectralPooling) for l in fixed)
    np.testing.assert_allclose([l.get_config()['strides'] for l in fixed],
                               applied, rtol=1e-6)
  elif mode == 'fixed_spectral_matched':
    want = sizes  # DiffStride's own map sizes.
  else:
    rounded = [tuple(max(1, int(round(s))) for s in pair) for pair in applied]
    assert exported.pooling_cls is None
    assert [tuple(stride_pair(s)) for s in exported.block_strides] == [
        tuple(float(v) for v in r) for r in rounded], exported.block_strides
    want, (h, w) = [], (SIZE, SIZE)
    for s_h, s_w in rounded:  # 'same' (or padded 'valid') strided convs.
      h, w = math.ceil(h / s_h), math.ceil(w / s_w)
      want.append((h, w))
  assert map_sizes(exported, x) == want, (mode, map_sizes(exported, x), want)
  if mode != 'strided_conv':  # Convolutions where the DiffStride ones run.
    want_macs = sum(m * a * b for m, (a, b)
                    in zip(MACS, [(SIZE, SIZE)] + want))
    assert complexity.conv_macs(exported, (SIZE, SIZE)) == want_macs, mode
  out = logits(exported, x)
  assert out.shape == (8, 3) and np.all(np.isfinite(out)), out
  path = os.path.join(directory, f'{mode}.keras')
  exported.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(logits(loaded, x), out, rtol=1e-5, atol=1e-6)
  assert structural_weights(loaded).keys() == got.keys()
  result[mode] = want

# 5. With a hard mask (R = 1e-3, strides whose thresholds are not near
# integers) the size-matched export computes DiffStride's function.
hard = small_resnet(smoothness_factor=1e-3)
set_strides(hard, [(1.3, 1.1), (2.1, 2.3), (2.7, 1.6)])
expected = logits(hard, x)
matched = export.export_model(hard, 'fixed_spectral_matched', (SIZE, SIZE))
np.testing.assert_allclose(logits(matched, x), expected,
                           rtol=1e-4, atol=1e-4 * np.abs(expected).max())
print('RESULT ' + json.dumps(result))
'''


@pytest.mark.parametrize('backend', ['jax', 'torch'])
def test_complexity_and_export_without_tensorflow(backend):
  result = subprocess_testing.run_backend_script(_SCRIPT, backend)
  output = json.dumps(result)
  assert result['backend'] == backend, output
  assert result['conv_mmacs'] > 0, output
  for mode in ('fixed_spectral', 'fixed_spectral_matched', 'strided_conv'):
    assert len(result[mode]) == 3, output
