"""Tests of the audio datasets (diffstride.experiments.data: audio, waveforms,
synthetic): TFDS audio tasks (mocked), WAV folders written by the tests,
resampling, the synthetic set, missing datasets, the sources' descriptions."""

import os
import wave

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import numpy as np
import pytest
import source_testing
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride.experiments.data import array_batches
from diffstride.experiments.data import audio as audio_data
from diffstride.experiments.data import wav_folders
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic
from diffstride.experiments.data import waveforms


def _batches(ds):
  return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def _check(ds, num_classes, batch_size, window, eval_windows=False):
  batches = _batches(ds)
  assert batches
  for x, y in batches:
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.ndim == 2 and x.shape[0] <= batch_size
    if eval_windows:
      assert x.shape[1] % window == 0 and x.shape[1] >= window
    else:
      assert x.shape[1] == window
    assert y.shape == (x.shape[0], num_classes)
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    assert np.all(np.isfinite(x))
  return batches


# ----------------------------------------------------------------------------
# Waveform operations.


def test_loudness_normalization_is_leafs():
  rng = np.random.default_rng(0)
  x = 0.5 * rng.standard_normal(16000).astype(np.float32)
  y = waveforms.loudness_normalization(x)
  # Gain 10^(15/20) / std (< 10^(30/20)): the output std is 5.62.
  np.testing.assert_allclose(y.std(), 10**(15 / 20), rtol=1e-4)
  quiet = 1e-4 * x
  y = waveforms.loudness_normalization(quiet)
  np.testing.assert_allclose(y, quiet * 10**(30 / 20), rtol=1e-5)  # Capped.
  zeros = waveforms.loudness_normalization(np.zeros(100))
  np.testing.assert_array_equal(zeros, 0.0)


def test_whole_clip_windows_pads_and_normalises_each_window():
  rng = np.random.default_rng(1)
  clip = np.concatenate([0.5 * rng.standard_normal(100),
                         1.0 * rng.standard_normal(100),
                         0.5 * rng.standard_normal(30)]).astype(np.float32)
  out = waveforms.whole_clip_windows(clip, 100)
  assert out.shape == (300,)
  windows = out.reshape(3, 100)
  np.testing.assert_allclose(windows[:2].std(axis=1), 10**(15 / 20),
                             rtol=1e-4)
  np.testing.assert_array_equal(windows[2, 30:], 0.0)
  cut = waveforms.whole_clip_windows(clip, 100, max_windows=2)
  assert cut.shape == (200,)
  short = waveforms.whole_clip_windows(clip[:10], 100, normalize=False)
  np.testing.assert_array_equal(short[:10], clip[:10])
  np.testing.assert_array_equal(short[10:], 0.0)


def test_random_crop_or_pad():
  clip = np.arange(50, dtype=np.float32)
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(200):
    crop = waveforms.random_crop_or_pad(clip, 20, rng)
    assert crop.shape == (20,) and np.all(np.diff(crop) == 1)
    starts.add(int(crop[0]))
  assert starts == set(range(31))  # Every offset in [0, T - length].
  padded = waveforms.random_crop_or_pad(clip[:5], 20, rng)
  np.testing.assert_array_equal(padded, np.r_[np.arange(5), np.zeros(15)])


@pytest.mark.parametrize('in_rate, out_rate', [(8000, 16000), (48000, 16000),
                                               (44100, 16000),
                                               (16000, 16000)])
def test_resample_keeps_a_tone(in_rate, out_rate):
  seconds, freq = 0.5, 440.0
  t_in = np.arange(int(seconds * in_rate)) / in_rate
  x = np.sin(2 * np.pi * freq * t_in).astype(np.float32)
  y = waveforms.resample(x, in_rate, out_rate)
  assert y.shape == (round(len(x) * out_rate / in_rate),)
  t_out = np.arange(len(y)) / out_rate
  middle = slice(len(y) // 4, 3 * len(y) // 4)  # Away from the edges.
  np.testing.assert_allclose(y[middle],
                             np.sin(2 * np.pi * freq * t_out)[middle],
                             atol=2e-2)


def test_resample_removes_what_is_above_the_new_nyquist():
  rate = 48000
  t = np.arange(rate // 2) / rate
  x = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 12000 * t)).astype(
      np.float32)
  y = waveforms.resample(x, rate, 16000)
  spectrum = np.abs(np.fft.rfft(y))
  freqs = np.fft.rfftfreq(len(y), 1 / 16000)
  assert spectrum[np.argmin(abs(freqs - 1000))] > 100 * np.median(spectrum)
  # 12 kHz would alias to 4 kHz: it must be gone.
  assert spectrum[np.argmin(abs(freqs - 4000))] < 1e-2 * spectrum.max()


# ----------------------------------------------------------------------------
# TFDS tasks (mocked: random examples, no files, no network).


@pytest.mark.parametrize('name, num_classes', [
    ('speech_commands', 12), ('crema_d', 6), ('voxforge', 6),
    ('voxceleb', 1252), ('nsynth_instrument', 11), ('nsynth_pitch', 128)])
def test_tfds_tasks_shapes(name, num_classes):
  with tfds.testing.mock_data(num_examples=10):
    train, test, info = audio_data.audio_datasets(
        name, batch_size=4, eval_batch_size=3, window_seconds=0.5)
  assert info.num_classes == num_classes
  assert info.image_shape == (8000,)
  assert (info.num_train_examples, info.num_test_examples) == (10, 10)
  assert train.element_spec[0].shape.as_list() == [4, 8000]
  train_batches = _check(train, num_classes, 4, 8000)
  test_batches = _check(test, num_classes, 3, 8000, eval_windows=True)
  assert [x.shape[0] for x, _ in train_batches] == [4, 4]
  assert sum(x.shape[0] for x, _ in test_batches) == 10
  if name.startswith('nsynth'):  # 4 s notes: 8 windows of 0.5 s.
    assert all(x.shape[1] == 8 * 8000 for x, _ in test_batches)
  else:
    # Mock clips are a few dozen samples: zero-padded to one window.
    x = test_batches[0][0]
    assert np.all(x[:, 100:] == 0.0) and np.all(x.std(axis=1) > 0)


def test_tfds_labels_come_from_the_right_feature():
  with tfds.testing.mock_data(num_examples=6):
    builder = tfds.builder('nsynth/full')
    examples = list(builder.as_dataset(split='test').take(6))
    _, pitch_test, _ = audio_data.audio_datasets(
        'nsynth_pitch', batch_size=6, normalize=False)
    _, family_test, _ = audio_data.audio_datasets(
        'nsynth_instrument', batch_size=6, normalize=False)
  pitch = np.argmax(next(iter(pitch_test))[1].numpy(), axis=1)
  family = np.argmax(next(iter(family_test))[1].numpy(), axis=1)
  np.testing.assert_array_equal(pitch, [e['pitch'].numpy() for e in examples])
  np.testing.assert_array_equal(
      family, [e['instrument']['family'].numpy() for e in examples])
  # Not normalised: NSynth audio is stored as float in [-1, 1], unscaled.
  x = next(iter(pitch_test))[0].numpy()
  np.testing.assert_allclose(
      x[0, :64000], examples[0]['audio'].numpy(), rtol=1e-6)


def test_int16_tasks_are_scaled():
  with tfds.testing.mock_data(num_examples=2):
    raw = next(iter(tfds.builder('speech_commands').as_dataset(
        split='test')))['audio'].numpy()
    _, test, _ = audio_data.audio_datasets('speech_commands', batch_size=2,
                                           normalize=False)
  x = next(iter(test))[0].numpy()[0]
  np.testing.assert_allclose(x[:len(raw)], raw / 32768.0, rtol=1e-6)


def test_max_examples_and_eval_cut():
  with tfds.testing.mock_data(num_examples=10):
    train, test, info = audio_data.audio_datasets(
        'nsynth_pitch', batch_size=2, max_train_examples=4,
        max_test_examples=3, max_eval_seconds=2.0)
  assert (info.num_train_examples, info.num_test_examples) == (4, 3)
  assert sum(x.shape[0] for x, _ in _batches(train)) == 4
  assert all(x.shape[1] == 32000 for x, _ in _batches(test))


@pytest.mark.parametrize('name, manual', [('speech_commands', False),
                                          ('voxceleb', True),
                                          ('voxforge', True)])
def test_missing_tfds_dataset_says_how_to_get_it(tmp_path, name, manual):
  with pytest.raises(FileNotFoundError) as error:
    audio_data.audio_datasets(name, data_dir=str(tmp_path))
  message = str(error.value)
  assert str(tmp_path) in message and 'download_and_prepare' in message
  assert ('manual' in message) == manual
  if name == 'voxceleb':
    assert 'vox_dev_wav.zip' in message


def test_tfds_data_dir_env_is_honoured(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'env_dir'))
  with pytest.raises(FileNotFoundError, match='env_dir'):
    audio_data.audio_datasets('crema_d')


def test_unknown_name():
  with pytest.raises(ValueError, match='Unknown audio dataset'):
    audio_data.audio_datasets('librispeech')


# ----------------------------------------------------------------------------
# WAV folders (real files written here).


def _write_wav(path, samples, rate, channels=1):
  pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype('<i2')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(str(path), 'wb') as w:
    w.setnchannels(channels)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())


def _tone_folder(root, rate=16000, per_class=5, seconds=(0.6, 1.7)):
  """Class 'high': 2 kHz tones; class 'low': 300 Hz tones; variable length."""
  rng = np.random.default_rng(0)
  for name, freq in (('high', 2000.0), ('low', 300.0)):
    for i in range(per_class):
      n = int(rng.uniform(*seconds) * rate)
      t = np.arange(n) / rate
      x = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6))
      _write_wav(os.path.join(root, name, f'{i}.wav'), x, rate)
  return root


PIPELINES = ('tf.data', 'numpy')


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_wav_folder_reads_decodes_and_splits(tmp_path, pipeline):
  root = _tone_folder(str(tmp_path / 'tones'))
  train, test, info = audio_data.audio_datasets(
      f'folder:{root}', batch_size=2, eval_batch_size=4, window_seconds=0.5,
      normalize=False, input_pipeline=pipeline)
  assert info.num_classes == 2 and info.image_shape == (8000,)
  assert (info.num_train_examples, info.num_test_examples) == (8, 2)
  _check(train, 2, 2, 8000)
  test_batches = _check(test, 2, 4, 8000, eval_windows=True)
  # Labels follow the sorted class folders: 'high' = 0, 'low' = 1; the
  # spectrum peak tells which.
  for x, y in test_batches:
    for clip, label in zip(x, y.argmax(axis=1)):
      freqs = np.fft.rfftfreq(len(clip), 1 / 16000)
      peak = freqs[np.argmax(np.abs(np.fft.rfft(clip)))]
      assert abs(peak - (2000.0 if label == 0 else 300.0)) < 10
      assert np.abs(clip).max() <= 0.51  # 16-bit PCM scaled to [-1, 1].
  gin.parse_config('audio_datasets.window_seconds = 0.5')
  assert audio_data.audio_dataset_info(f'folder:{root}') == info
  # Clips of different lengths, random crops: each epoch is a fixed pass.
  passes = info.train_epochs
  assert passes.for_dataset(train) is passes.of_epoch
  crops = lambda epoch: np.concatenate(
      [x for x, _ in _batches(passes.of_epoch(epoch))])
  np.testing.assert_array_equal(crops(1), crops(1))
  assert crops(1).shape == (8, 8000) and not np.array_equal(crops(1), crops(2))


def test_both_pipelines_read_the_same_clips(tmp_path):
  """The test sets of both pipelines are equal to the sample (the same
  NumPy reading, windowing and normalisation), and every train crop of
  either is a slice of one of its class's clips."""
  root = _tone_folder(str(tmp_path / 'tones'), per_class=4)
  name = f'folder:{root}'
  data = {pipeline: audio_data.audio_datasets(
      name, batch_size=2, eval_batch_size=3, window_seconds=0.25,
      input_pipeline=pipeline) for pipeline in PIPELINES}
  tests = [_batches(data[p][1]) for p in PIPELINES]
  assert [x.shape for x, _ in tests[0]] == [x.shape for x, _ in tests[1]]
  for (x1, y1), (x2, y2) in zip(*tests):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  clips = audio_data.audio_source(name, window=4000).clips().train
  for pipeline in PIPELINES:
    assert isinstance(data[pipeline][0], array_batches.ArrayBatches) == (
        pipeline == 'numpy')
    _, _, info = audio_data.audio_datasets(
        name, batch_size=2, window_seconds=0.25, normalize=False,
        input_pipeline=pipeline)
    for x, y in _batches(info.train_epochs.of_epoch(3)):
      for crop, label in zip(x, y.argmax(axis=1)):
        # A slice of one clip of its class.
        found = False
        for i in np.flatnonzero(clips.labels == label):
          clip = clips.read(i)
          found |= any(np.array_equal(clip[s:s + 4000], crop)
                       for s in np.flatnonzero(clip == crop[0]))
        assert found, pipeline


def test_wav_folder_separate_test_folder_and_bad_class_sets(tmp_path):
  train_root = _tone_folder(str(tmp_path / 'train'), per_class=3)
  test_root = _tone_folder(str(tmp_path / 'test'), per_class=2)
  _, test, info = audio_data.audio_datasets(
      f'folder:{train_root},{test_root}', batch_size=2)
  assert (info.num_train_examples, info.num_test_examples) == (6, 4)
  assert sum(x.shape[0] for x, _ in _batches(test)) == 4
  os.makedirs(tmp_path / 'test' / 'extra')
  _write_wav(str(tmp_path / 'test' / 'extra' / 'a.wav'), np.zeros(100), 16000)
  with pytest.raises(ValueError, match='must match'):
    audio_data.audio_datasets(f'folder:{train_root},{test_root}')


def test_wav_folder_resamples_other_rates(tmp_path):
  root = _tone_folder(str(tmp_path / 'tones8k'), rate=8000, per_class=2,
                      seconds=(1.0, 1.0))
  _, test, info = audio_data.audio_datasets(
      f'folder:{root}', batch_size=4, normalize=False, test_split=0.5)
  x, y = _batches(test)[0]
  for clip, label in zip(x, y.argmax(axis=1)):
    # 1 s at 8 kHz -> 16000 samples at 16 kHz, the tone at the same pitch.
    assert np.abs(clip).max() > 0.4
    freqs = np.fft.rfftfreq(len(clip), 1 / 16000)
    peak = freqs[np.argmax(np.abs(np.fft.rfft(clip)))]
    assert abs(peak - (2000.0 if label == 0 else 300.0)) < 5
  assert info.image_shape == (16000,)


def test_wav_folder_wrong_rate_is_a_clear_error_without_resampling(tmp_path):
  root = _tone_folder(str(tmp_path / 'tones'), per_class=2)
  _write_wav(os.path.join(root, 'low', 'odd.wav'), np.zeros(441), 44100)
  with pytest.raises(ValueError, match=r'odd.wav \(44100 Hz\)'):
    audio_data.audio_datasets(f'folder:{root}', resample=False)


def test_wav_folder_stereo_is_averaged(tmp_path):
  root = str(tmp_path / 'stereo')
  left_right = np.stack([np.full(1000, 0.5), np.full(1000, -0.25)], axis=1)
  _write_wav(os.path.join(root, 'a', '0.wav'), left_right.reshape(-1), 16000,
             channels=2)
  _write_wav(os.path.join(root, 'b', '0.wav'), np.zeros(1000), 16000)
  x = waveforms.read_wav(os.path.join(root, 'a', '0.wav'), 16000)
  np.testing.assert_allclose(x, 0.125, atol=1e-4)


def test_wav_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    audio_data.audio_datasets(f'folder:{tmp_path / "missing"}')
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='is empty'):
    audio_data.audio_datasets(f'folder:{tmp_path / "empty"}')
  os.makedirs(tmp_path / 'nowav' / 'a')
  open(tmp_path / 'nowav' / 'a' / 'x.txt', 'w').write('x')
  with pytest.raises(ValueError, match='no .wav files'):
    audio_data.audio_datasets(f'folder:{tmp_path / "nowav"}')
  bad = tmp_path / 'bad' / 'a'
  os.makedirs(bad)
  open(bad / 'x.wav', 'wb').write(b'not a wav file at all')
  with pytest.raises(ValueError, match='16-bit PCM'):
    audio_data.audio_datasets(f'folder:{tmp_path / "bad"}')


# ----------------------------------------------------------------------------
# The built-in synthetic set.


def _examples(indices, split=0, seed=0):
  out = [synthetic.synthetic_audio_example(i, split, seed) for i in indices]
  return (np.stack([x for x, _ in out]),
          np.array([int(y) for _, y in out]))


def test_synthetic_is_deterministic_and_balanced():
  x1, y1 = _examples(range(16))
  x2, y2 = _examples(range(16))
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, np.arange(16) % 8)
  assert x1.shape == (16, 32000) and x1.dtype == np.float32
  x3, _ = _examples(range(16), split=1)
  x4, _ = _examples(range(16), seed=1)
  assert not np.allclose(x1, x3) and not np.allclose(x1, x4)
  assert len(synthetic.synthetic_audio_classes()) == 8


def _band_energy_centroid(x):
  spectrum = np.abs(np.fft.rfft(x))**2
  freqs = np.fft.rfftfreq(x.shape[-1], 1 / 16000)
  return (spectrum * freqs).sum(-1) / spectrum.sum(-1)


def _envelope_modulation(x):
  frames = x.reshape(x.shape[0], -1, 320)
  rms = np.sqrt((frames**2).mean(-1))
  return rms.std(-1) / rms.mean(-1)


def test_synthetic_classes_differ_in_pitch_and_in_time():
  x, y = _examples(range(64))
  centroid = _band_energy_centroid(x)
  modulation = _envelope_modulation(x)
  structure, register = y // 2, y % 2
  # Register: within each structure, high clips have a higher centroid.
  for s in range(4):
    low = centroid[(structure == s) & (register == 0)]
    high = centroid[(structure == s) & (register == 1)]
    assert np.median(high) > 1.5 * np.median(low), s
  # Time course: steady tones have a flat envelope, pulsed tones and noise
  # bursts a strongly modulated one.
  assert modulation[structure == 0].max() < 0.3
  assert modulation[structure == 1].min() > 0.5
  assert modulation[structure == 3].min() > 0.5


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_synthetic_datasets_and_info(pipeline):
  gin.parse_config("""
      synthetic_audio_settings.num_train = 24
      synthetic_audio_settings.num_test = 10
  """)
  train, test, info = audio_data.audio_datasets('synthetic_audio',
                                                batch_size=8,
                                                input_pipeline=pipeline)
  assert info == audio_data.audio_dataset_info('synthetic_audio')
  assert (info.num_classes, info.image_shape, info.num_train_examples,
          info.num_test_examples) == (8, (16000,), 24, 10)
  assert len(_check(train, 8, 8, 16000)) == 3
  test_batches = _check(test, 8, 8, 16000, eval_windows=True)
  assert all(x.shape[1] == 32000 for x, _ in test_batches)  # 2 s clips.
  labels = np.concatenate([y.argmax(1) for _, y in test_batches])
  np.testing.assert_array_equal(labels, np.arange(10) % 8)


def test_info_follows_gin_bindings():
  gin.parse_config("""
      audio_datasets.name = 'nsynth_pitch'
      audio_datasets.window_seconds = 0.5
      audio_datasets.max_test_examples = 7
  """)
  info = audio_data.audio_dataset_info()
  assert (info.name, info.num_classes, info.image_shape,
          info.num_test_examples) == ('nsynth_pitch', 128, (8000,), 7)


# ----------------------------------------------------------------------------
# Sources: one object describes a dataset (no data read) and loads it.

# Every kind of audio source: (name, bindings of audio_datasets, other gin
# bindings), on top of the test's WAV folders and TFDS's mock data.
_SOURCE_KINDS = {
    'synthetic': ('synthetic_audio', {}, {
        'synthetic_audio_settings.num_train': 12,
        'synthetic_audio_settings.num_test': 5}),
    'folder': ('folder:{tmp}/tones', {'test_split': 0.3}, {}),
    'train_and_test_folders': ('folder:{tmp}/train,{tmp}/test', {}, {}),
    # TFDS: describe() has the full split sizes, so the examples are cut
    # below the mock's 10.
    'speech_commands': ('speech_commands', {'max_train_examples': 6,
                                            'max_test_examples': 4}, {}),
    'nsynth_pitch': ('nsynth_pitch', {'max_train_examples': 6,
                                      'max_test_examples': 4}, {}),
}
_SOURCE_ARGS = ('test_split', 'max_train_examples', 'max_test_examples')


def _bind_source_kind(kind, tmp_path):
  """Binds `audio_datasets` to a source of `kind`; returns its name and the
  `audio_source` arguments of these bindings."""
  name, bindings, others = _SOURCE_KINDS[kind]
  name = name.format(tmp=tmp_path)
  if kind == 'folder':
    _tone_folder(str(tmp_path / 'tones'))
  elif kind == 'train_and_test_folders':
    _tone_folder(str(tmp_path / 'train'), per_class=3)
    _tone_folder(str(tmp_path / 'test'), per_class=2)
  gin.bind_parameter('audio_datasets.name', name)
  gin.bind_parameter('audio_datasets.batch_size', 4)
  gin.bind_parameter('audio_datasets.window_seconds', 0.5)
  for parameter, value in bindings.items():
    gin.bind_parameter(f'audio_datasets.{parameter}', value)
  for binding, value in others.items():
    gin.bind_parameter(binding, value)
  return name, {k: v for k, v in bindings.items() if k in _SOURCE_ARGS}


@pytest.mark.parametrize('kind', sorted(_SOURCE_KINDS))
def test_dry_run_info_is_the_loaded_info(kind, tmp_path, monkeypatch):
  name, source_args = _bind_source_kind(kind, tmp_path)
  with tfds.testing.mock_data(num_examples=10):
    described = audio_data.audio_dataset_info()  # train(dry_run=True)'s.
    train, test, info = audio_data.audio_datasets()
    assert info == described and info.name == name
    assert info.image_shape == (8000,)
    assert _batches(train)[0][0].shape[1:] == info.image_shape
    assert sum(len(x) for x, _ in _batches(test)) == info.num_test_examples
    source = audio_data.audio_source(name, window=8000, **source_args)
    source_testing.assert_load_info_comes_from_describe(
        source, described, monkeypatch)


def test_describe_reads_no_audio(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError('describe() read data.')

  monkeypatch.setattr(synthetic.SyntheticAudioSettings, 'arrays', no_data)
  monkeypatch.setattr(wav_folders, 'check_wav_sample_rates', no_data)
  monkeypatch.setattr(waveforms, 'read_wav', no_data)
  monkeypatch.setattr(waveforms, 'wav_sample_rate', no_data)
  monkeypatch.setattr(tfds, 'builder', no_data)
  for kind in sorted(_SOURCE_KINDS):
    gin.clear_config()
    name, _ = _bind_source_kind(kind, tmp_path / kind)
    assert audio_data.audio_dataset_info().name == name
  # Settings errors show in a dry run too, with the loading's messages.
  gin.parse_config("audio_datasets.name = 'crema_d'\n"
                   'audio_datasets.sample_rate = 8000')
  with pytest.raises(ValueError, match='stored at 16000 Hz'):
    audio_data.audio_dataset_info()


def test_tfds_counts_are_measured_when_loaded():
  with tfds.testing.mock_data(num_examples=10):
    source = audio_data.audio_source('crema_d', window=16000)
    described, loaded = source.describe(), source.load().info
  assert (described.num_train_examples, described.num_test_examples) == (
      5_144, 1_556)  # The full splits.
  assert loaded == described.with_counts(10, 10)  # The mock's.


def test_describe_only_is_not_bindable():
  with pytest.raises(ValueError, match='denylisted'):
    gin.parse_config('audio_datasets.describe_only = True')


def test_folder_hold_out_is_seeded_and_fixed_by_the_source(tmp_path):
  root = _tone_folder(str(tmp_path / 'tones'))
  split = lambda seed: audio_data.audio_source(
      f'folder:{root}', window=16000, seed=seed).split
  assert split(0) == split(0) and split(0) != split(1)
  files = split(3)
  assert len(files.test.paths) == 2 and len(files.train.paths) == 8
  assert not set(files.test.paths) & set(files.train.paths)
  train_idx, test_idx = sources.held_out_split(10, 0.2, 3)
  assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(10))
  assert len(test_idx) == 2
