"""Shift consistency: the shifts (`diffstride.shifts`, against NumPy), the
harness's measure (`diffstride.experiments.consistency`) on models that are
and are not shift invariant, and its table in the report."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from diffstride import shifts
from diffstride.experiments import consistency
from diffstride.experiments import report


def _np_crop_pad(image, dh, dw, fill=0.0):
  """NumPy reference: content moved by (dh, dw), the rest `fill`."""
  h, w = image.shape[:2]
  out = np.full_like(image, fill)
  src_rows = slice(max(0, -dh), min(h, h - dh))
  dst_rows = slice(max(0, dh), min(h, h + dh))
  src_cols = slice(max(0, -dw), min(w, w - dw))
  dst_cols = slice(max(0, dw), min(w, w + dw))
  out[dst_rows, dst_cols] = image[src_rows, src_cols]
  return out


def _images(batch=6, h=7, w=9, c=2, seed=0):
  return np.random.default_rng(seed).standard_normal(
      (batch, h, w, c)).astype('float32')


def test_circular_shift_is_np_roll():
  x = _images()
  offsets = np.array([[0, 0], [1, 2], [-3, 4], [6, -8], [-7, 9], [2, -1]],
                     'int32')
  out = np.asarray(shifts.shift_images(x, offsets, 'circular'))
  for b in range(len(x)):
    np.testing.assert_array_equal(
        out[b], np.roll(x[b], tuple(offsets[b]), axis=(0, 1)))


def test_crop_pad_moves_the_content_and_fills_zeros():
  x = _images() + 10.0  # No zero in the content.
  offsets = np.array([[0, 0], [1, 2], [-3, 4], [2, -1], [-1, -1], [6, 8]],
                     'int32')
  out = np.asarray(shifts.shift_images(x, offsets, 'crop_pad'))
  for b, (dh, dw) in enumerate(offsets):
    np.testing.assert_array_equal(out[b], _np_crop_pad(x[b], dh, dw))
  # Offsets (1, 2): the first row and the first two columns are zeros, and
  # nothing else.
  assert np.all(out[1, :1] == 0) and np.all(out[1, :, :2] == 0)
  assert np.all(out[1, 1:, 2:] != 0)
  np.testing.assert_array_equal(out[1, 1:, 2:], x[1, :-1, :-2])
  # (-3, 4): the last three rows and the first four columns.
  assert np.all(out[2, -3:] == 0) and np.all(out[2, :, :4] == 0)
  assert np.all(out[2, :-3, 4:] != 0)
  # Zero offsets leave the image as it is.
  np.testing.assert_array_equal(out[0], x[0])


def test_offsets_are_within_bounds_cover_them_and_follow_the_seed():
  rng = np.random.default_rng(3)
  offsets = shifts.random_offsets(rng, 4000, 4)
  assert offsets.shape == (4000, 2) and offsets.dtype == np.int32
  assert offsets.min() == -4 and offsets.max() == 4
  assert set(np.unique(offsets)) == set(range(-4, 5))
  again = shifts.random_offsets(np.random.default_rng(3), 4000, 4)
  np.testing.assert_array_equal(offsets, again)
  other = shifts.random_offsets(np.random.default_rng(4), 4000, 4)
  assert not np.array_equal(offsets, other)
  assert np.all(shifts.random_offsets(rng, 10, 0) == 0)
  with pytest.raises(ValueError, match='max_shift'):
    shifts.random_offsets(rng, 10, -1)
  with pytest.raises(ValueError, match='shift form'):
    shifts.shift_images(_images(), np.zeros((6, 2), 'int32'), 'reflect')


def test_waveform_shifts_stay_within_each_clip():
  rng = np.random.default_rng(0)
  x = np.zeros((3, 12), 'float32')
  lengths = [12, 8, 5]
  for b, n in enumerate(lengths):
    x[b, :n] = rng.uniform(1, 2, n)  # Zero padding after the clip.
  np.testing.assert_array_equal(np.asarray(shifts.signal_lengths(x)), lengths)
  np.testing.assert_array_equal(
      np.asarray(shifts.signal_lengths(x[..., None])), lengths)
  offsets = np.array([3, -2, 7], 'int32')
  circular = np.asarray(shifts.shift_waveforms(x, offsets, 'circular'))
  crop_pad = np.asarray(shifts.shift_waveforms(x[..., None], offsets,
                                               'crop_pad'))[..., 0]
  for b, (n, s) in enumerate(zip(lengths, offsets)):
    np.testing.assert_array_equal(circular[b, :n], np.roll(x[b, :n], s))
    assert np.all(circular[b, n:] == 0) and np.all(crop_pad[b, n:] == 0)
    expected = np.zeros(n, 'float32')
    if s >= 0:
      expected[s:] = x[b, :max(n - s, 0)]
    else:
      expected[:s] = x[b, -s:n]
    np.testing.assert_array_equal(crop_pad[b, :n], expected)


def _dataset(inputs, num_classes=10, batch=16, seed=0):
  labels = np.random.default_rng(seed).integers(0, num_classes, len(inputs))
  return tf.data.Dataset.from_tensor_slices(
      (inputs, np.eye(num_classes, dtype='float32')[labels])).batch(batch)


def _image_model(invariant):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((16, 16, 3))
  # Invariant: global means of the input and of its square (a 'same'
  # convolution before them would not be: its zero padding is not circular).
  # Sensitive: a convolution, flattened, then dense.
  if invariant:
    x = keras.layers.Concatenate()([
        keras.layers.GlobalAveragePooling2D()(inputs),
        keras.layers.GlobalAveragePooling2D()(
            keras.layers.Lambda(lambda t: t * t)(inputs))])
  else:
    x = keras.layers.Flatten()(keras.layers.Conv2D(
        8, 3, padding='same', activation='relu')(inputs))
  return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_a_shift_invariant_model_is_fully_consistent_circularly():
  images = _images(batch=64, h=16, w=16, c=3, seed=1)
  result = consistency.shift_consistency(
      _image_model(invariant=True), _dataset(images), max_shift=4, seed=0)
  assert result['circular'] == 1.0
  assert result['num_examples'] == 64
  assert (result['max_shift'], result['unit'], result['seed']) == (
      4, 'pixels', 0)
  # Zeros come in at the border: the crop-and-pad form changes the means.
  assert 0.0 <= result['crop_pad'] <= 1.0


def test_a_shift_sensitive_model_is_not_and_the_seed_fixes_the_result():
  images = _images(batch=64, h=16, w=16, c=3, seed=1)
  model = _image_model(invariant=False)
  ds = _dataset(images)
  result = consistency.shift_consistency(model, ds, max_shift=4, seed=0)
  assert result['circular'] < 0.9 and result['crop_pad'] < 0.9, result
  again = consistency.shift_consistency(model, ds, max_shift=4, seed=0)
  other = consistency.shift_consistency(model, ds, max_shift=4, seed=1)
  drop = lambda r: {k: v for k, v in r.items() if k != 'seconds'}
  assert drop(again) == drop(result)
  # The model called itself (what multi-worker runs do): the same.
  local = consistency.shift_consistency(model, ds, 4, seed=0, local=True)
  assert drop(local) == drop(result)
  assert drop(other) != drop(result)
  # Agreement and accuracy counted by hand for the first batch.
  first = consistency.shift_consistency(model, ds, 4, seed=0, max_batches=1)
  rng = np.random.default_rng(0)
  a, b = (shifts.random_offsets(rng, 16, 4) for _ in range(2))
  x, y = next(iter(ds))
  for form in shifts.FORMS:
    la, lb = (np.asarray(model(shifts.shift_images(x, o, form)))
              for o in (a, b))
    assert first[form] == np.mean(la.argmax(-1) == lb.argmax(-1))
    labels = np.argmax(y, -1)
    assert first[f'top1_{form}'] == pytest.approx(
        (np.mean(la.argmax(-1) == labels) + np.mean(lb.argmax(-1) == labels))
        / 2)


def test_waveforms_of_a_time_invariant_model():
  rng = np.random.default_rng(0)
  waves = rng.standard_normal((40, 400)).astype('float32')
  waves[::2, 300:] = 0.0  # Half the clips end with padding.
  inputs = keras.Input((400,))
  stats = keras.layers.Lambda(lambda t: keras.ops.stack(
      [keras.ops.mean(t, 1), keras.ops.mean(t * t, 1),
       keras.ops.mean(t ** 3, 1)], axis=1))(inputs)
  keras.utils.set_random_seed(0)
  model = keras.Model(inputs, keras.layers.Dense(5)(stats))
  result = consistency.shift_consistency(model, _dataset(waves, 5),
                                         max_shift=160, seed=0)
  assert result['circular'] == 1.0
  assert result['unit'] == 'samples' and result['num_examples'] == 40


def test_max_shift_binding():
  class Audio:
    class frontend:  # pylint: disable=invalid-name
      sample_rate = 8000

  assert consistency.resolve_max_shift('auto', None, (32, 32, 3)) == 4
  assert consistency.resolve_max_shift('auto', None, (224, 224, 3)) == 28
  assert consistency.resolve_max_shift('auto', None, (16000,)) == 160
  assert consistency.resolve_max_shift('auto', Audio(), (8000,)) == 80
  assert consistency.resolve_max_shift(2, None, (32, 32, 3)) == 2
  for off in (0, None, False):
    assert consistency.resolve_max_shift(off, None, (32, 32, 3)) == 0
  for bad in (-1, 2.5, 'big', True):
    with pytest.raises(ValueError, match='shift_consistency_max_shift'):
      consistency.resolve_max_shift(bad, None, (32, 32, 3))


def _run(root, name, method, seed, top1, shift=None):
  path = os.path.join(str(root), name)
  os.makedirs(path)
  metrics = {'dataset': 'synthetic_frequency', 'test_top1': top1,
             'seed': seed, 'method': method, 'stride_init': [2, 2, 2],
             'complexity_weight': 0.0, 'learned_strides': {}}
  if shift is not None:
    metrics['shift_consistency'] = {
        'circular': shift[0], 'crop_pad': shift[1], 'max_shift': 4,
        'unit': 'pixels', 'num_examples': 1000, 'seed': seed}
  with open(os.path.join(path, 'metrics.json'), 'w') as f:
    json.dump(metrics, f)
  return path


def test_report_shows_consistency_and_a_dash_for_old_runs(tmp_path):
  dirs = [_run(tmp_path, 'bp0', 'blurpool', 0, 0.8, (0.90, 0.80)),
          _run(tmp_path, 'bp1', 'blurpool', 1, 0.9, (0.94, 0.84)),
          _run(tmp_path, 'sc0', 'strided_conv', 0, 0.7)]  # Before the key.
  runs = [report.load_run(d) for d in dirs]
  table = consistency.consistency_table(runs)
  rows = {line.split('|')[1].strip(): [c.strip() for c in
                                       line.strip('|').split('|')]
          for line in table.splitlines() if line.startswith('| ')}
  blurpool = [k for k in rows if 'blur' in k.lower()][0]
  assert rows[blurpool][2:] == ['85.0 ± 7.1 (n=2)', '92.0 ± 2.8 (n=2)',
                                '82.0 ± 2.8 (n=2)']
  strided = [k for k in rows if k not in (blurpool, 'method')][0]
  assert rows[strided][3:] == ['—', '—']
  assert 'up to 4 pixels' in table
  written = report.write_report(dirs, str(tmp_path / 'out'))
  assert 'Shift consistency' in open(written['report']).read()
  assert consistency.consistency_table(runs[2:]) == ''
