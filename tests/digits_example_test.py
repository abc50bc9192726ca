"""Runs examples/digits.py (the DiffStride + BatchNorm recalibration tutorial)
in a reduced form and checks what it prints and writes."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_EXAMPLE = _REPO / 'examples' / 'digits.py'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _load_example():
  pytest.importorskip('sklearn')
  pytest.importorskip('matplotlib')
  spec = importlib.util.spec_from_file_location('digits_example', _EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_flags():
  example = _load_example()
  args = example.parse_args([])
  assert (args.epochs, args.seeds, args.out) == (12, [0, 1, 2],
                                                 'docs/tutorial')
  assert args.poolings == ['diffstride', 'fixed_spectral', 'average']
  args = example.parse_args(['--epochs', '3', '--seeds', '4,5', '--out', 'x',
                             '--poolings', 'average'])
  assert (args.epochs, args.seeds, args.out) == (3, [4, 5], 'x')
  assert args.poolings == ['diffstride', 'average']
  for bad in (['--epochs', '0'], ['--seeds', ''], ['--poolings', 'max']):
    with pytest.raises(SystemExit):
      example.parse_args(bad)


def test_data_and_models():
  example = _load_example()
  (x_train, y_train), (x_test, y_test) = example.load_data()
  assert x_train.shape == (1400, 32, 32, 1) and x_test.shape == (397, 32, 32,
                                                                 1)
  assert y_train.shape == (1400,) and y_test.shape == (397,)
  # sklearn's 8 x 8 digits (pixel values 0..16) scaled by 1 / 16, all of
  # them with their labels, shuffled and split.
  assert x_train.min() == 0.0 and x_train.max() == 1.0
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  small = np.concatenate([x_train, x_test])[:, ::4, ::4, 0] * 16.0
  np.testing.assert_array_equal(small, np.round(small))

  def examples(images, labels):
    return sorted(zip(labels.tolist(),
                      images.reshape(len(images), -1).astype(int).tolist()))

  assert examples(small, np.concatenate([y_train, y_test])) == examples(
      digits.images, digits.target)
  # 8 x 8 images upsampled by pixel repetition.
  np.testing.assert_array_equal(x_train[:, ::4, ::4], x_train[:, 1::4, 2::4])
  sizes = {p: example.map_sizes(example.make_model(p), x_test)
           for p in example.POOLINGS}
  # DiffStride keeps larger maps (about H / S + 2R) than fixed pooling.
  assert sizes['fixed_spectral'] == [(16, 16), (4, 5)]
  assert sizes['average'] == [(16, 16), (6, 6)]
  assert sizes['diffstride'][0][0] > 16 and sizes['diffstride'][1][0] > 6


@pytest.mark.slow
def test_reduced_run(tmp_path):
  pytest.importorskip('sklearn')
  pytest.importorskip('matplotlib')
  out = tmp_path / 'tutorial'
  model_path = tmp_path / 'model.keras'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run(
      [sys.executable, str(_EXAMPLE), '--epochs', '2', '--seeds', '0',
       '--poolings', 'diffstride', '--out', str(out),
       '--save-model', str(model_path)],
      capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-5000:]
  stdout = proc.stdout
  print(stdout)

  # Plots written.
  for name in ('strides.png', 'test_accuracy.png'):
    data = (out / name).read_bytes()
    assert data.startswith(_PNG_MAGIC) and len(data) > 5000, name
  assert model_path.is_file()
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['epochs'] == 2 and summary['seeds'] == [0]

  # The strides moved from their initial values 2 and 3.
  run, = summary['runs']
  strides = np.array(run['strides'])
  assert strides.shape == (3, 2, 2)  # [epochs + 1, layers, (h, w)]
  np.testing.assert_allclose(strides[0], [[2.0, 2.0], [3.0, 3.0]])
  assert np.max(np.abs(strides[-1] - strides[0])) > 1e-3
  assert np.all(strides >= 1.0)

  # Accuracies: recalibrated ones printed and meaningful (chance is 0.1).
  assert 'test (recalibrated)' in stdout
  assert 'recalibrated from 64 images only' in stdout
  assert len(run['test_accuracy_per_epoch']) == 2
  recalibrated = run['test_accuracy_recalibrated']
  assert 0.3 < recalibrated <= 1.0
  assert recalibrated >= run['test_accuracy_moving']
  # Recalibrated from one batch of 64 training images: an accuracy over the
  # 397 test images, far above the moving averages' and near the full
  # recalibration's (measured: 0.635, 0.134 and 0.670).
  few = summary['recalibrated_from_64_images']
  assert few * 397 == pytest.approx(round(few * 397), abs=1e-3)
  assert few > 0.3 and few > run['test_accuracy_moving'] + 0.1
  assert abs(few - recalibrated) < 0.2
  callback_run = summary['callback_run']
  assert len(callback_run['test_accuracy_per_epoch']) == 2
  # With BatchNormRecalibration the last validation is the recalibrated
  # model's: the same weights as the plain run (recalibration does not
  # change training), so the same accuracy.
  # (fit validates in batches of 64, evaluate in batches of 32: allow a
  # couple of near-tie predictions to flip out of 397.)
  assert callback_run['test_accuracy_per_epoch'][-1] == pytest.approx(
      recalibrated, abs=2.5 / 397)
  # Momentum only changes the moving statistics, not training.
  momentum_run, = summary['momentum_0.99']
  assert momentum_run['test_accuracy_recalibrated'] == pytest.approx(
      recalibrated, abs=2.5 / 397)

  # Saved and reloaded: same outputs and strides.
  reload = summary['reload']
  assert reload['outputs_equal'] is True
  assert reload['max_abs_difference'] == 0.0
  np.testing.assert_allclose(reload['strides'], strides[-1], rtol=0, atol=0)
  assert 'reloaded outputs equal: True' in stdout
