"""AudioClassifier: whole-clip averaging, layout, saving, gin, stride logs."""

import glob
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import audio_model
from diffstride import frontend
from diffstride import pooling
from diffstride import resnet
from diffstride.experiments import callbacks
from diffstride.experiments import model_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, 'gin')
WINDOW = 4000  # 0.25 s windows keep the tests fast.



def _small_model(pooling_cls=pooling.DiffStride, num_classes=3):
  keras.utils.set_random_seed(0)
  backbone = resnet.Resnet([4, 4, 8], [1, 1, (2, 2)],
                           num_output_classes=num_classes, id_only=[0], num_layers=1, kernel_size=3,
                           channels_first=False, pooling_cls=pooling_cls)
  model = audio_model.AudioClassifier(
      backbone, frontend.MelFrontend(num_mel_bins=16), window_samples=WINDOW)
  model.build((None, WINDOW))
  return model


def _waves(batch, windows, seed=0):
  return np.random.default_rng(seed).standard_normal(
      (batch, windows * WINDOW)).astype(np.float32)


def test_output_shape_and_build():
  model = _small_model()
  assert model(_waves(2, 1)).shape == (2, 3)
  assert model.compute_output_shape((None, WINDOW)) == (None, 3)
  # The backbone sees (time, mel, 1) spectrograms: 25 frames x 16 bands.
  assert model.backbone.built
  assert model.frontend(_waves(1, 1)).shape == (1, 25, 16)


def test_whole_clip_logits_are_the_mean_over_consecutive_windows():
  model = _small_model()
  clips = _waves(2, 3, seed=1)
  logits = model(clips).numpy()
  per_window = model(clips.reshape(6, WINDOW)).numpy().reshape(2, 3, 3)
  np.testing.assert_allclose(logits, per_window.mean(axis=1), rtol=1e-5,
                             atol=1e-5)


def test_zero_padding_windows_are_ignored_and_partial_windows_padded():
  model = _small_model()
  clips = _waves(2, 2, seed=2)
  padded = np.concatenate([clips, np.zeros((2, 2 * WINDOW), np.float32)],
                          axis=1)
  np.testing.assert_allclose(model(padded).numpy(), model(clips).numpy(),
                             rtol=1e-5, atol=1e-5)
  # A clip of 1.5 windows: the second window is zero-padded, not dropped.
  part = clips[:, :WINDOW + WINDOW // 2]
  full = np.concatenate([part, np.zeros((2, WINDOW // 2), np.float32)], 1)
  np.testing.assert_allclose(model(part).numpy(), model(full).numpy(),
                             rtol=1e-5, atol=1e-5)
  second = model(full[:, WINDOW:]).numpy()
  first = model(full[:, :WINDOW]).numpy()
  np.testing.assert_allclose(model(part).numpy(), (first + second) / 2,
                             rtol=1e-5, atol=1e-5)
  # An all-zero clip still gets logits (the mean over all its windows).
  assert np.all(np.isfinite(model(np.zeros((1, 2 * WINDOW), np.float32))))


def _former_tensorflow_path(model, clips):
  """The former TensorFlow `call`: tf.signal.frame windows, frontend and
  backbone per window, the mean over the non-empty windows (numpy)."""
  windows = tf.signal.frame(clips, WINDOW, WINDOW, pad_end=True).numpy()
  flat = windows.reshape(-1, WINDOW)
  logits = model.backbone(model.frontend(flat)[..., None]).numpy()
  logits = logits.reshape(windows.shape[0], windows.shape[1], -1)
  valid = np.any(windows != 0, axis=2)
  valid[~valid.any(axis=1)] = True
  return (logits * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)


def test_matches_the_former_tensorflow_path_with_unknown_sizes():
  model = _small_model()
  clips = _waves(3, 3, seed=5)[:, :-1234]  # 2.7 windows.
  clips[1, WINDOW:] = 0.0  # One window, then padding.
  clips[2] = 0.0  # No window: the mean over all of them.
  expected = _former_tensorflow_path(model, clips)
  np.testing.assert_allclose(model(clips).numpy(), expected, rtol=1e-5,
                             atol=1e-5)
  graph = tf.function(model, input_signature=[
      tf.TensorSpec([None, None], tf.float32)])
  assert graph.get_concrete_function().structured_outputs.shape.as_list() == [
      None, 3]
  np.testing.assert_allclose(graph(clips).numpy(), expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(graph(clips[:2, :WINDOW]).numpy(),
                             model(clips[:2, :WINDOW]).numpy(), rtol=1e-5,
                             atol=1e-5)
  model.compile(loss='mse', jit_compile=True)
  np.testing.assert_allclose(model.predict(clips, verbose=0), expected,
                             rtol=1e-4, atol=1e-5)


def test_float32_logits_under_mixed_precision_and_tracked_sizes():
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy('mixed_float16')
  try:
    model = _small_model()
  finally:
    keras.config.set_dtype_policy(policy)
  assert model.backbone.dtype_policy.name == 'mixed_float16'
  logits = model(_waves(2, 2))
  assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
  assert diffstride.size_tracker(model) is not None


class _Recorder(keras.Model):
  """A backbone that records what it is given and returns zeros [B, 3]."""

  def call(self, x, training=None):
    self.seen = x
    return tf.zeros([tf.shape(x)[0], 3]) + 0.0 * tf.reduce_mean(x)


def test_time_is_height_and_frequency_is_width():
  recorder = _Recorder()
  model = audio_model.AudioClassifier(
      recorder, frontend.MelFrontend(num_mel_bins=16), window_samples=WINDOW)
  waves = _waves(2, 1)
  model(waves)
  # [B, time frames, mel bands, 1]: height = time, width = frequency.
  np.testing.assert_array_equal(recorder.seen.numpy()[..., 0],
                                model.frontend(waves).numpy())
  # So DiffStride's first stride acts on time, the second on frequency.
  spec = recorder.seen
  out = pooling.DiffStride(strides=(3.0, 1.0), smoothness_factor=2.0,
                           data_format='channels_last')(spec)
  assert (out.shape[1], out.shape[2]) == diffstride.diffstride_output_size(
      25, 16, (3.0, 1.0), smoothness_factor=2.0)
  assert out.shape[1] < 25 and out.shape[2] >= 14
  model = _small_model()
  # time_frequency_strides names the axes.
  stage = [l for l in model._flatten_layers()  # pylint: disable=protected-access
           if isinstance(l, pooling.DiffStride)][-1]
  stage.strides.assign([2.5, 1.5])
  named = audio_model.time_frequency_strides(model)
  assert named[stage.name] == {'time': 2.5, 'frequency': 1.5}
  assert diffstride.learned_strides(model)[stage.name] == [2.5, 1.5]


@pytest.mark.parametrize('pooling_cls', [pooling.DiffStride, None,
                                         pooling.FixedSpectralPooling])
def test_keras_file_round_trip(tmp_path, pooling_cls):
  model = _small_model(pooling_cls)
  layers = [l for l in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(l, pooling.DiffStride)]
  for layer in layers:
    layer.strides.assign([2.2, 1.7])
  clips = _waves(2, 2, seed=3)
  path = str(tmp_path / 'audio.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is audio_model.AudioClassifier
  assert loaded.window_samples == WINDOW
  assert loaded.frontend.num_mel_bins == 16
  np.testing.assert_allclose(loaded(clips).numpy(), model(clips).numpy(),
                             rtol=1e-5, atol=1e-5)
  for pair in audio_model.time_frequency_strides(loaded).values():
    np.testing.assert_allclose([pair['time'], pair['frequency']], [2.2, 1.7],
                               rtol=1e-6)
  assert len(audio_model.time_frequency_strides(loaded)) == len(layers)


def test_gin_builds_it_and_logger_writes_time_and_frequency(tmp_path):
  gin.parse_config("""
      audio_classifier.backbone_fn = @Resnet
      audio_classifier.window_seconds = 0.25
      mel_frontend.num_mel_bins = 16
      Resnet.filters = [4, 4, 8]
      Resnet.strides = [1, 1, (2, 2)]
      Resnet.id_only = [0]
      Resnet.num_layers = 1
      Resnet.kernel_size = 3
      Resnet.channels_first = False
      Resnet.pooling_cls = @DiffStride
  """)
  model = gin.get_configurable('audio_classifier')(num_output_classes=2)
  assert isinstance(model, audio_model.AudioClassifier)
  assert model.window_samples == WINDOW
  model.build((None, WINDOW))
  model.compile(keras.optimizers.Adam(0.05),
                keras.losses.CategoricalCrossentropy(from_logits=True))
  logger = callbacks.TimeFrequencyStrideLogger(str(tmp_path))
  x = _waves(8, 1, seed=4)
  y = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
  model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[logger])
  lines = [json.loads(l) for l in
           open(tmp_path / 'time_frequency_strides.jsonl')]
  assert [l['epoch'] for l in lines] == [0, 1, 2]
  last = lines[-1]['strides']
  assert last and all(set(v) == {'time', 'frequency'} for v in last.values())
  assert lines[-1]['strides'] != lines[0]['strides']  # They were learned.
  tags = set()
  for path in glob.glob(str(tmp_path / 'tensorboard' / 'time_frequency' /
                            'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert any(t.endswith('/time') for t in tags)
  assert any(t.endswith('/frequency') for t in tags)


def test_training_names_the_method_of_the_backbone():
  for pooling_cls, method in ((None, 'strided_conv'),
                              ('FixedSpectralPooling', 'spectral_pooling'),
                              ('DiffStride', 'diffstride')):
    model = audio_model.AudioClassifier(resnet.resnet18(
        num_output_classes=3, channels_first=False, pooling_cls=pooling_cls))
    assert model_info.method_key(model) == method
    assert model_info.stride_init(model) == [2, 2, 2]
