"""MelFrontend against tf.signal and a direct numpy computation; SpecAugment
(also inside `fit`); saving; gin. (JAX and PyTorch without TensorFlow:
tests/audio_backends_test.py.)"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import frontend

from audio_backends_test import MASK_VALUE, MaskProbe  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

# LEAF's defaults, an 8 kHz set-up with an even (periodic Hann) window, and
# the arguments of the round-trip tests below.
_SETUPS = {
    'leaf': {},
    '8khz': dict(sample_rate=8000, window_ms=31.875, hop_ms=16.0,
                 fft_length=256, num_mel_bins=24, lower_edge_hertz=100.0,
                 upper_edge_hertz=3800.0, log_offset=1e-3),
    '22khz': dict(sample_rate=22050, window_ms=30.0, hop_ms=12.0,
                  fft_length=1024, num_mel_bins=64, lower_edge_hertz=30.0,
                  upper_edge_hertz=10000.0, log_offset=1e-4),
    '44khz': dict(sample_rate=44100, window_ms=46.4, hop_ms=10.0,
                  fft_length=2048, num_mel_bins=128, lower_edge_hertz=0.0,
                  upper_edge_hertz=22050.0),
}
# log(mel + offset): an absolute error in the log domain is the relative
# error of the mel energies. Measured against tf.signal: 6.7e-6 (LEAF's
# defaults) to 2.3e-5 ('44khz': narrow bands of a few bins from 0 Hz, where
# the mel weights' ulp-level differences weigh most).
_TF_ATOL = 5e-5



def _hz_to_mel(f):
  return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def _numpy_mel_matrix(num_mel, num_fft_bins, sample_rate, low, high):
  """Triangular filters on the HTK mel scale, written from the definition:
  band edges equally spaced in mel between `low` and `high` (num_mel + 2
  points), filter m rises from edge m to m + 1 and falls to m + 2, each linear
  in mel; the DC bin gets no weight."""
  freqs = np.linspace(0.0, sample_rate / 2.0, num_fft_bins)[1:]
  mel = _hz_to_mel(freqs)[:, None]
  edges = np.linspace(_hz_to_mel(low), _hz_to_mel(high), num_mel + 2)
  left, centre, right = edges[:-2], edges[1:-1], edges[2:]
  rising = (mel - left) / (centre - left)
  falling = (right - mel) / (right - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  return np.concatenate([np.zeros((1, num_mel)), weights], axis=0)


def _numpy_log_mel(x, sample_rate=16000, window_ms=25.0, hop_ms=10.0,
                   fft_length=512, num_mel=40, low=60.0, high=7800.0,
                   offset=1e-5):
  """log(|rfft(hann * frame)|^2 @ mel + offset), frames padded at the end."""
  window = int(sample_rate * window_ms // 1000 + 1)
  hop = int(sample_rate * hop_ms // 1000)
  num_frames = -(-x.shape[-1] // hop)
  padded = np.pad(x.astype(np.float64),
                  [(0, 0), (0, (num_frames - 1) * hop + window - x.shape[-1])])
  # tf.signal.hann_window(periodic=True), as tf.signal.stft uses it: the
  # periodic Hann for even lengths, the symmetric one for odd lengths (LEAF's
  # 401-sample window is symmetric).
  denominator = window if window % 2 == 0 else window - 1
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / denominator)
  frames = np.stack([padded[:, i * hop:i * hop + window]
                     for i in range(num_frames)], axis=1)
  power = np.abs(np.fft.rfft(frames * hann, n=fft_length, axis=-1))**2
  mel = power @ _numpy_mel_matrix(num_mel, fft_length // 2 + 1, sample_rate,
                                  low, high)
  return np.log(mel + offset)


def test_defaults_are_leafs():
  layer = frontend.MelFrontend()
  assert (layer.sample_rate, layer.window_length, layer.hop_length,
          layer.fft_length, layer.num_mel_bins) == (16000, 401, 160, 512, 40)
  assert (layer.lower_edge_hertz, layer.upper_edge_hertz,
          layer.log_offset) == (60.0, 7800.0, 1e-5)
  assert not layer.spec_augment


def test_mel_matrix_matches_numpy_definition():
  layer = frontend.MelFrontend()
  expected = _numpy_mel_matrix(40, 257, 16000, 60.0, 7800.0)
  np.testing.assert_allclose(layer.mel_matrix, expected, atol=1e-5)


def _waves(num_samples, sample_rate, seed=0):
  """float32 [5, num_samples]: a tone in noise, noise, very quiet noise,
  silence, and noise that stops half-way."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / sample_rate
  half = np.arange(num_samples) < num_samples // 2
  return np.stack([
      0.3 * np.sin(2 * np.pi * 440.0 * t)
      + 0.05 * rng.standard_normal(num_samples),
      0.1 * rng.standard_normal(num_samples),
      1e-4 * rng.standard_normal(num_samples),
      np.zeros(num_samples),
      rng.standard_normal(num_samples) * half]).astype(np.float32)


def _tf_mel_matrix(layer):
  return tf.signal.linear_to_mel_weight_matrix(
      layer.num_mel_bins, layer.fft_length // 2 + 1, layer.sample_rate,
      layer.lower_edge_hertz, layer.upper_edge_hertz).numpy()


def _tf_signal_log_mel(layer, x):
  """The former TensorFlow path: tf.signal's STFT (periodic Hann window,
  pad_end) and mel matrix, log(|STFT|^2 @ mel + offset)."""
  stft = tf.signal.stft(x, layer.window_length, layer.hop_length,
                        layer.fft_length, pad_end=True)
  mel = tf.tensordot(tf.square(tf.abs(stft)), _tf_mel_matrix(layer), 1)
  return tf.math.log(mel + layer.log_offset).numpy()


@pytest.mark.parametrize('setup', sorted(_SETUPS))
def test_window_and_mel_matrix_are_tf_signals(setup):
  layer = frontend.MelFrontend(**_SETUPS[setup])
  expected = _tf_mel_matrix(layer)
  assert layer.mel_matrix.dtype == np.float32
  assert layer.mel_matrix.shape == expected.shape
  # The same float32 operations; TensorFlow's float32 log differs from the
  # rounded float64 one by an ulp or two of the mel values (~2000), which
  # moves a weight (<= 1) by 1.6e-5 at most (measured).
  np.testing.assert_allclose(layer.mel_matrix, expected, rtol=0, atol=3e-5)
  window = tf.signal.hann_window(layer.window_length, periodic=True).numpy()
  assert layer.window.dtype == np.float32
  np.testing.assert_allclose(layer.window, window, rtol=0, atol=1.2e-7)
  for length in (2, 3, 256, 401, 2047):
    np.testing.assert_allclose(
        frontend.hann_window(length),
        tf.signal.hann_window(length, periodic=True).numpy(), rtol=0,
        atol=1.2e-7)  # One float32 ulp at 1.


@pytest.mark.parametrize('setup', sorted(_SETUPS))
def test_matches_the_former_tensorflow_path(setup):
  layer = frontend.MelFrontend(**_SETUPS[setup])
  for num_samples in (layer.sample_rate // 2, 4321):
    x = _waves(num_samples, layer.sample_rate)
    np.testing.assert_allclose(layer(x).numpy(), _tf_signal_log_mel(layer, x),
                               rtol=0, atol=_TF_ATOL)


def test_unknown_batch_and_length_in_a_graph_and_under_xla():
  layer = frontend.MelFrontend()
  x = _waves(4321, 16000)
  eager = layer(x).numpy()
  signature = [tf.TensorSpec([None, None], tf.float32)]
  graph = tf.function(layer, input_signature=signature)
  assert graph.get_concrete_function().structured_outputs.shape.as_list() == [
      None, None, 40]
  np.testing.assert_allclose(graph(x).numpy(), eager, rtol=0, atol=1e-6)
  np.testing.assert_allclose(graph(x[:2, :1000]).numpy(),
                             layer(x[:2, :1000]).numpy(), rtol=0, atol=1e-6)
  xla = tf.function(layer, jit_compile=True)
  np.testing.assert_allclose(xla(x).numpy(), eager, rtol=0, atol=_TF_ATOL)
  # SpecAugment with the sizes unknown: whole rows and columns, the rest
  # unchanged.
  masking = frontend.MelFrontend(spec_augment=True, mask_value=MASK_VALUE,
                                 seed=0)
  train = tf.function(lambda w: masking(w, training=True),
                      input_signature=signature)
  masked = train(x).numpy()
  hit = masked == MASK_VALUE
  assert hit.any()
  np.testing.assert_allclose(masked[~hit], eager[~hit], rtol=0, atol=1e-6)
  for example in hit:
    rows, cols = example.all(axis=1), example.all(axis=0)
    np.testing.assert_array_equal(example, rows[:, None] | cols[None, :])


@pytest.mark.parametrize('num_samples, kwargs', [
    (16000, {}),
    (4321, {}),
    # 8 kHz, a 256-sample window: even, so the periodic Hann.
    (8000, dict(sample_rate=8000, window_ms=31.875, hop_ms=16.0,
                fft_length=256, num_mel_bins=24, lower_edge_hertz=100.0,
                upper_edge_hertz=3800.0, log_offset=1e-3)),
])
def test_matches_numpy(num_samples, kwargs):
  rng = np.random.default_rng(0)
  t = np.arange(num_samples) / kwargs.get('sample_rate', 16000)
  x = np.stack([0.3 * np.sin(2 * np.pi * 440.0 * t) +
                0.05 * rng.standard_normal(num_samples),
                0.1 * rng.standard_normal(num_samples)]).astype(np.float32)
  layer = frontend.MelFrontend(**kwargs)
  y = layer(x).numpy()
  numpy_kwargs = dict(
      sample_rate=kwargs.get('sample_rate', 16000),
      window_ms=kwargs.get('window_ms', 25.0),
      hop_ms=kwargs.get('hop_ms', 10.0),
      fft_length=kwargs.get('fft_length', 512),
      num_mel=kwargs.get('num_mel_bins', 40),
      low=kwargs.get('lower_edge_hertz', 60.0),
      high=kwargs.get('upper_edge_hertz', 7800.0),
      offset=kwargs.get('log_offset', 1e-5))
  expected = _numpy_log_mel(x, **numpy_kwargs)
  assert y.shape == expected.shape
  assert y.shape[1] == layer.num_frames(num_samples)
  assert y.shape == layer.compute_output_shape(x.shape)
  # Log domain: absolute tolerance (float32 STFT vs float64).
  np.testing.assert_allclose(y, expected, atol=2e-3, rtol=1e-4)
  # The 440 Hz tone lands in the mel band whose centre is closest to it.
  edges = np.linspace(_hz_to_mel(numpy_kwargs['low']),
                      _hz_to_mel(numpy_kwargs['high']),
                      numpy_kwargs['num_mel'] + 2)
  assert abs(np.argmax(y[0].mean(axis=0)) -
             np.argmin(abs(edges[1:-1] - _hz_to_mel(440.0)))) <= 1


def test_one_second_gives_100_frames_and_accepts_channel_axis():
  x = np.random.default_rng(1).standard_normal((3, 16000, 1)).astype(
      np.float32)
  layer = frontend.MelFrontend()
  y = layer(x)
  assert y.shape == (3, 100, 40)
  np.testing.assert_allclose(y.numpy(), layer(x[..., 0]).numpy())
  assert frontend.num_frames(16000) == 100


def test_spec_augment_masks_bands_in_training_only():
  x = np.random.default_rng(2).standard_normal((8, 16000)).astype(np.float32)
  plain = frontend.MelFrontend()(x).numpy()
  layer = frontend.MelFrontend(spec_augment=True, time_mask_max_frames=10,
                               freq_mask_max_bins=8, mask_value=-7.0, seed=3)
  np.testing.assert_array_equal(layer(x).numpy(), plain)
  np.testing.assert_array_equal(layer(x, training=False).numpy(), plain)
  augmented = layer(x, training=True).numpy()
  masked = augmented != plain
  np.testing.assert_array_equal(augmented[masked], -7.0)
  assert masked.any()
  for example in masked:
    # Masked entries are unions of whole time rows and whole mel columns.
    rows = example.all(axis=1)
    cols = example.all(axis=0)
    np.testing.assert_array_equal(example, rows[:, None] | cols[None, :])
    assert rows.sum() <= 2 * 10 and cols.sum() <= 2 * 8
  # Different masks per example and per call.
  assert not np.array_equal(masked[0], masked[1])
  assert not np.array_equal(layer(x, training=True).numpy() != plain, masked)


def test_spec_augment_masks_are_zero_one_bands():
  keep = frontend.spec_augment_masks((4, 100, 40), 2, 10, 2, 10, 0).numpy()
  assert keep.shape == (4, 100, 40)
  assert set(np.unique(keep)) == {0.0, 1.0}
  for example in keep == 0.0:
    rows, cols = example.all(axis=1), example.all(axis=0)
    np.testing.assert_array_equal(example, rows[:, None] | cols[None, :])
    assert rows.sum() <= 20 and cols.sum() <= 20


@pytest.mark.parametrize('spec_augment, jit_compile',
                         [(True, False), (True, True), (False, False)])
def test_fit_trains_on_masked_features_and_inference_is_unmasked(
    spec_augment, jit_compile):
  """A probe after the frontend counts the time rows and mel columns of its
  inputs that are entirely `mask_value`: with SpecAugment `fit` must give it
  some (without, none); `predict` / `evaluate` never."""
  keras.utils.set_random_seed(0)
  probe = MaskProbe()
  model = keras.Sequential([
      keras.Input((16000,)),
      frontend.MelFrontend(spec_augment=spec_augment, mask_value=MASK_VALUE,
                           seed=0),
      probe, keras.layers.Flatten(), keras.layers.Dense(2)])
  model.compile('adam', 'mse', jit_compile=jit_compile)
  x = np.random.default_rng(4).standard_normal((8, 16000)).astype(np.float32)
  y = np.zeros((8, 2), np.float32)
  model.fit(x, y, batch_size=4, epochs=1, verbose=0)
  counts = probe.counts()
  assert counts['train_calls'] == 2, counts
  if spec_augment:
    assert counts['train_rows'] > 0 and counts['train_cols'] > 0, counts
  else:
    assert counts['train_rows'] == counts['train_cols'] == 0, counts
  model.predict(x, batch_size=4, verbose=0)
  model.evaluate(x, y, batch_size=4, verbose=0)
  assert probe.counts()['other_masked'] == 0, probe.counts()


@pytest.mark.parametrize('kwargs, match', [
    (dict(fft_length=256), 'fft_length'),
    (dict(num_mel_bins=0), 'num_mel_bins'),
    (dict(upper_edge_hertz=9000.0), 'upper_edge_hertz'),
    (dict(lower_edge_hertz=8000.0, upper_edge_hertz=7000.0), 'lower_edge'),
    (dict(log_offset=0.0), 'log_offset'),
    (dict(hop_ms=0.01), 'hop'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    frontend.MelFrontend(**kwargs)


def test_bad_input_shape():
  with pytest.raises(ValueError, match='mono'):
    frontend.MelFrontend()(np.zeros((2, 1000, 2), np.float32))


_ARGS = dict(sample_rate=22050, window_ms=30.0, hop_ms=12.0, fft_length=1024,
             num_mel_bins=64, lower_edge_hertz=30.0, upper_edge_hertz=10000.0,
             log_offset=1e-4, spec_augment=True, time_mask_count=3,
             time_mask_max_frames=7, freq_mask_count=1, freq_mask_max_bins=5,
             mask_value=-1.0, seed=11)


def test_config_round_trip():
  layer = frontend.MelFrontend(name='mel', **_ARGS)
  config = layer.get_config()
  for key, value in _ARGS.items():
    assert config[key] == value, key
  clone = frontend.MelFrontend.from_config(config)
  assert clone.get_config() == config
  np.testing.assert_array_equal(clone.mel_matrix, layer.mel_matrix)
  revived = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(revived) is frontend.MelFrontend


def test_keras_file_round_trip(tmp_path):
  model = keras.Sequential([
      keras.Input((8000,)),
      frontend.MelFrontend(num_mel_bins=32, hop_ms=20.0),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
  ])
  x = np.random.default_rng(5).standard_normal((2, 8000)).astype(np.float32)
  path = str(tmp_path / 'm.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.layers[0].num_mel_bins == 32
  assert loaded.layers[0].hop_length == 320
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5)


def test_every_argument_is_bindable_in_gin():
  gin.parse_config("""
      mel_frontend.num_mel_bins = 64
      mel_frontend.hop_ms = 20.0
      mel_frontend.spec_augment = True
      mel_frontend.freq_mask_max_bins = 4
  """)
  layer = gin.get_configurable('mel_frontend')()
  assert type(layer) is frontend.MelFrontend
  assert (layer.num_mel_bins, layer.hop_length, layer.spec_augment,
          layer.freq_mask_max_bins) == (64, 320, True, 4)
