"""MelFrontend and AudioClassifier on JAX and PyTorch with TensorFlow blocked.

This process (TensorFlow) computes the frontend's reference with `tf.signal`
(today's TensorFlow numbers) and saves an `AudioClassifier`; a fresh process
per backend, whose script first sets `sys.modules['tensorflow'] = None` (so
any TensorFlow import fails), imports the package, compares its frontend
output and logits with them, and trains one `fit` step whose SpecAugment
masks a probe layer at the start of the backbone must see (and `predict`
must not).
"""

import ast
import importlib.util
import json
import os
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
from keras import ops
import numpy as np
import pytest

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

ROOT = subprocess_testing.ROOT
WINDOW = 1600  # 0.1 s windows: 10 frames x 16 mel bands keep it quick.
MASK_VALUE = -100.0  # Below any log-mel value (log(1e-5) = -11.5).
# Log domain (absolute) = relative error of the mel energies. Measured for
# these waves: 3.8e-6 on TensorFlow, JAX and PyTorch.
FEATURES_ATOL = 3e-5
OWN_MODULES = ('diffstride/frontend.py', 'diffstride/audio_model.py')


class MaskProbe(keras.layers.Layer):
  """Identity on log-mel features [B, T, M] or [B, T, M, 1] that counts, in
  non-trainable variables, the time rows and mel columns of its inputs that
  are entirely `mask_value`: in training calls and in the other calls."""

  def __init__(self, mask_value=MASK_VALUE, **kwargs):
    super().__init__(**kwargs)
    self.mask_value = mask_value

  def build(self, input_shape):
    def counter(name):
      return self.add_weight(name=name, shape=(), initializer='zeros',
                             trainable=False)
    self.train_calls = counter('train_calls')
    self.train_rows = counter('train_rows')
    self.train_cols = counter('train_cols')
    self.other_masked = counter('other_masked')

  def call(self, x, training=None):
    masked = ops.equal(ops.reshape(x, ops.shape(x)[:3]), self.mask_value)
    rows = ops.sum(ops.cast(ops.all(masked, axis=2), 'float32'))
    cols = ops.sum(ops.cast(ops.all(masked, axis=1), 'float32'))
    if training:
      self.train_calls.assign_add(1.0)
      self.train_rows.assign_add(rows)
      self.train_cols.assign_add(cols)
    else:
      self.other_masked.assign_add(rows + cols)
    return x

  def counts(self):
    return {v.name.split('/')[-1]: float(ops.convert_to_numpy(v.value))
            for v in (self.train_calls, self.train_rows, self.train_cols,
                      self.other_masked)}

  def get_config(self):
    return dict(super().get_config(), mask_value=self.mask_value)


_SCRIPT = textwrap.dedent('''
    import sys
    sys.modules['tensorflow'] = None  # Any TensorFlow import fails.
    import json
    import os

    BACKEND, DIR = PARAMETERS
    os.environ['KERAS_BACKEND'] = BACKEND
    import diffstride  # pylint: disable=unused-import
    import keras
    from keras import ops
    import numpy as np
    from diffstride import frontend
    sys.path.insert(0, 'tests')
    import audio_backends_test as shared

    assert keras.backend.backend() == BACKEND, keras.backend.backend()
    ref = np.load(os.path.join(DIR, 'reference.npz'))
    result = {}
    features = ops.convert_to_numpy(frontend.MelFrontend()(ref['waves']))
    result['features_max_abs'] = float(
        np.max(np.abs(features - ref['tf_signal'])))
    model = keras.models.load_model(os.path.join(DIR, 'model.keras'))
    logits = ops.convert_to_numpy(model(ref['clips']))
    result['logits_max_abs'] = float(np.max(np.abs(logits - ref['logits'])))

    keras.utils.set_random_seed(0)
    model = shared.classifier(spec_augment=True)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.array(w) for w in model.get_weights()]
    x, y = shared.training_data()
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    result['loss'] = history.history['loss']
    result['changed'] = sum(not np.array_equal(a, b) for a, b in
                            zip(before, model.get_weights()))
    model.predict(x, verbose=0)
    result['probe'] = model.backbone.layers[0].counts()
    print('RESULT ' + json.dumps(result))
''')


def backbone(num_mel_bins=16, probe=False):
  """A small plain-Keras backbone: [B, T, M, 1] -> logits [B, 3]."""
  frames = -(-WINDOW // 160)
  layers = [MaskProbe()] if probe else []
  return keras.Sequential([
      keras.Input((frames, num_mel_bins, 1)), *layers,
      keras.layers.Conv2D(4, 3, padding='same', activation='relu'),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3),
  ])


def classifier(spec_augment=False):
  """An AudioClassifier of 0.1 s windows; with `spec_augment`, its backbone
  starts with a `MaskProbe` and the masks are 2 x 3 frames, 2 x 3 bins."""
  from diffstride import audio_model  # pylint: disable=g-import-not-at-top
  from diffstride import frontend  # pylint: disable=g-import-not-at-top
  mel = frontend.MelFrontend(
      num_mel_bins=16, spec_augment=spec_augment, time_mask_max_frames=3,
      freq_mask_max_bins=3, mask_value=MASK_VALUE, seed=0)
  model = audio_model.AudioClassifier(backbone(probe=spec_augment), mel,
                                      window_samples=WINDOW)
  model.build((None, WINDOW))
  return model


def training_data():
  rng = np.random.default_rng(1)
  return (rng.standard_normal((4, WINDOW)).astype(np.float32),
          np.arange(4) % 3)


def test_frontend_and_classifier_sources_do_not_import_tensorflow():
  for path in OWN_MODULES:
    with open(os.path.join(ROOT, path)) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom)
               else [])
      assert not any(n.split('.')[0] == 'tensorflow' for n in names), (
          f'{path}:{node.lineno} imports TensorFlow')


@pytest.mark.parametrize('backend', ['jax', 'torch'])
def test_frontend_and_classifier_without_tensorflow(backend, tmp_path):
  if importlib.util.find_spec(backend) is None:
    pytest.skip(f'{backend} is not installed')
  if keras.backend.backend() != 'tensorflow':
    pytest.skip('the reference process runs on TensorFlow')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from diffstride import frontend  # pylint: disable=g-import-not-at-top
  # Today's TensorFlow numbers: tf.signal's STFT and mel matrix.
  rng = np.random.default_rng(0)
  t = np.arange(4321) / 16000.0
  waves = np.stack([0.3 * np.sin(2 * np.pi * 440.0 * t)
                    + 0.05 * rng.standard_normal(t.size),
                    0.1 * rng.standard_normal(t.size)]).astype(np.float32)
  layer = frontend.MelFrontend()
  stft = tf.signal.stft(waves, layer.window_length, layer.hop_length,
                        layer.fft_length, pad_end=True)
  mel = tf.signal.linear_to_mel_weight_matrix(
      layer.num_mel_bins, layer.fft_length // 2 + 1, layer.sample_rate,
      layer.lower_edge_hertz, layer.upper_edge_hertz)
  tf_signal = tf.math.log(tf.tensordot(tf.square(tf.abs(stft)), mel, 1)
                          + layer.log_offset).numpy()
  np.testing.assert_allclose(layer(waves).numpy(), tf_signal, rtol=0,
                             atol=FEATURES_ATOL)
  keras.utils.set_random_seed(0)
  model = classifier()
  clips = rng.standard_normal((2, 2 * WINDOW + 700)).astype(np.float32)
  clips[1, WINDOW:] = 0.0  # One window, then zero padding.
  model.save(str(tmp_path / 'model.keras'))
  np.savez(tmp_path / 'reference.npz', waves=waves, tf_signal=tf_signal,
           clips=clips, logits=model(clips).numpy())

  script = _SCRIPT.replace('PARAMETERS', repr((backend, str(tmp_path))))
  result = subprocess_testing.run_script(script, timeout=300)
  print(backend, json.dumps(result))
  assert result['features_max_abs'] <= FEATURES_ATOL, result
  assert result['logits_max_abs'] <= 1e-4, result
  assert np.all(np.isfinite(result['loss'])) and result['changed'] > 0, result
  probe = result['probe']
  # One training step saw masked time rows and mel columns; predict none.
  assert probe['train_calls'] >= 1 and probe['other_masked'] == 0, probe
  assert probe['train_rows'] > 0 and probe['train_cols'] > 0, probe
