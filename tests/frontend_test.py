"""MelFrontend against a direct numpy computation; SpecAugment; saving; gin."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import keras
import numpy as np
import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import frontend



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


def test_spec_augment_masks_in_fit_of_a_model():
  layer = frontend.MelFrontend(spec_augment=True, seed=0)
  keep = frontend.spec_augment_masks((4, 100, 40), 2, 10, 2, 10, 0)
  assert keep.shape == (4, 100, 40)
  assert set(np.unique(keep.numpy())) <= {0.0, 1.0}
  model = keras.Sequential([keras.Input((16000,)), layer,
                            keras.layers.Flatten(), keras.layers.Dense(2)])
  model.compile('adam', 'mse')
  x = np.random.default_rng(4).standard_normal((4, 16000)).astype(np.float32)
  model.fit(x, np.zeros((4, 2)), epochs=1, verbose=0)


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
