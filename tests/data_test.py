"""Tests of the image datasets (diffstride.experiments.data: images, sources,
augmentation, synthetic): the input pipelines, the sources' descriptions and
the synthetic data set.

TFDS datasets run through `tfds.testing.mock_data` (random examples, no
files, no network); the synthetic set and image folders are real.
"""

import ast
import math
import os

import gin
import keras
import numpy as np
import pytest
import source_testing
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride.experiments.data import array_batches
from diffstride.experiments.data import augmentation
from diffstride.experiments.data import batching
from diffstride.experiments.data import images as image_data
from diffstride.experiments.data import image_folders
from diffstride.experiments.data import sources
from diffstride.experiments.data import synthetic

SYN = synthetic.SYNTHETIC_FREQUENCY_NAME


def _batches(ds):
  return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def _first(ds):
  x, y = next(iter(ds))
  return np.asarray(x), np.asarray(y)


def _check_batches(ds, batch_size, image_shape, num_classes, one_hot=True):
  batches = _batches(ds)
  assert batches
  for x, y in batches:
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape[1:] == tuple(image_shape)
    assert y.shape == (x.shape[0], num_classes)
    assert x.shape[0] <= batch_size
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(x))
    if one_hot:
      assert np.all((y == 0) | (y == 1))
  return batches


# ----------------------------------------------------------------------------
# TFDS datasets (mocked).


@pytest.mark.parametrize('name,num_classes', [('cifar10', 10),
                                              ('cifar100', 100)])
def test_cifar_shapes_and_lengths(name, num_classes):
  with tfds.testing.mock_data(num_examples=10):
    train, test, info = image_data.image_datasets(name, batch_size=4,
                                                  eval_batch_size=3)
    assert info == sources.DatasetInfo(name, num_classes, (32, 32, 3), 10, 10)
    # Train: full batches only (static batch size); test: partial batch kept.
    assert train.element_spec[0].shape.as_list() == [4, 32, 32, 3]
    assert len(train) == 2 and len(test) == math.ceil(10 / 3)
    train_batches = _check_batches(train, 4, (32, 32, 3), num_classes)
    test_batches = _check_batches(test, 3, (32, 32, 3), num_classes)
    assert [x.shape[0] for x, _ in train_batches] == [4, 4]
    assert [x.shape[0] for x, _ in test_batches] == [3, 3, 3, 1]


def test_cifar_image_size_and_max_examples():
  with tfds.testing.mock_data(num_examples=10):
    train, test, info = image_data.image_datasets(
        'cifar10', batch_size=2, image_size=48, max_train_examples=6,
        max_test_examples=5)
    assert info.image_shape == (48, 48, 3)
    assert (info.num_train_examples, info.num_test_examples) == (6, 5)
    assert sum(x.shape[0] for x, _ in _check_batches(
        train, 2, (48, 48, 3), 10)) == 6
    assert sum(x.shape[0] for x, _ in _check_batches(
        test, 2, (48, 48, 3), 10)) == 5


@pytest.mark.parametrize('image_size,side', [(None, 224), (64, 64)])
def test_imagenet_crops(image_size, side):
  # Mock ImageNet images have random sizes between 5 and 50 pixels.
  with tfds.testing.mock_data(num_examples=6):
    train, test, info = image_data.image_datasets(
        'imagenet2012', batch_size=4, image_size=image_size)
    assert info.name == 'imagenet2012' and info.num_classes == 1000
    assert info.image_shape == (side, side, 3)
    _check_batches(train, 4, (side, side, 3), 1000)
    _check_batches(test, 4, (side, side, 3), 1000)
    # Eval crops are deterministic, train crops random.
    np.testing.assert_array_equal(_first(test)[0], _first(test)[0])
    train_noaug, _, _ = image_data.image_datasets(
        'imagenet2012', batch_size=6, image_size=image_size, augment=False,
        shuffle_buffer=1)
    test_all, _ = _first(image_data.image_datasets(
        'imagenet2012', batch_size=6, image_size=image_size)[1])
    # Mocked splits hold the same examples: un-augmented train == test.
    np.testing.assert_allclose(_first(train_noaug)[0], test_all, atol=1e-5)
    train_aug, _, _ = image_data.image_datasets(
        'imagenet2012', batch_size=6, image_size=image_size, shuffle_buffer=1)
    assert np.abs(_first(train_aug)[0] - test_all).max() > 0.1


def test_imagenet_crop_functions_on_real_jpeg():
  image = tf.cast(tf.random.stateless_uniform([304, 400, 3], [1, 2],
                                              maxval=256, dtype=tf.int32),
                  tf.uint8)
  jpeg = tf.io.encode_jpeg(image)
  out = augmentation.imagenet_eval_image(jpeg)
  assert out.shape == (224, 224, 3) and out.dtype == tf.float32
  # The central 87.5% of the shorter side, 266 = 0.875 * 304 pixels (19
  # rows above and below, 67 columns left and right) of the decoded image,
  # in [0, 1], resized: a crop one pixel off differs by ~0.5 somewhere (the
  # pixels are noise).
  decoded = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
  expected = tf.image.resize(decoded[19:285, 67:333] / 255.0, (224, 224),
                             method='bilinear', antialias=True)
  np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=0,
                             atol=1e-5)
  assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1
  crops = [augmentation.imagenet_train_image(jpeg, tf.constant([i, 0]), 96)
           for i in range(4)]
  assert all(c.shape == (96, 96, 3) for c in crops)
  assert not np.allclose(crops[0].numpy(), crops[1].numpy())


def test_missing_tfds_dataset_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    image_data.image_datasets('cifar10', data_dir=str(tmp_path))
  message = str(error.value)
  assert 'cifar10' in message and 'download' in message
  assert str(tmp_path) in message and 'download_and_prepare' in message
  assert not os.listdir(tmp_path)  # Nothing was downloaded or written.
  with pytest.raises(FileNotFoundError) as error:
    image_data.image_datasets('imagenet2012', data_dir=str(tmp_path))
  message = str(error.value)
  assert 'imagenet2012' in message and 'download' in message
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message


def test_tfds_data_dir_env_fallback(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='cifar100') as error:
    image_data.image_datasets('cifar100')
  assert str(tmp_path) in str(error.value)


def test_unknown_name_raises_value_error():
  with pytest.raises(ValueError, match='cifar10.*synthetic_frequency'):
    image_data.image_datasets('mnist')
  with pytest.raises(ValueError, match='Unknown dataset'):
    image_data.dataset_info('svhn')


# ----------------------------------------------------------------------------
# Pipeline behaviour (on the synthetic set: real data, fast).


# The built-in sets' two input pipelines: every claim below holds for both.
PIPELINES = pytest.mark.parametrize('pipeline', ['tf.data', 'numpy'])


def _syn(pipeline='tf.data', **kwargs):
  args = dict(batch_size=8, max_train_examples=32, max_test_examples=20,
              input_pipeline=pipeline)
  args.update(kwargs)
  return image_data.image_datasets(SYN, **args)


@PIPELINES
def test_synthetic_shapes_lengths_and_default_info(pipeline):
  train, test, info = _syn(pipeline, eval_batch_size=6)
  assert info == sources.DatasetInfo(SYN, 10, (32, 32, 3), 32, 20)
  assert len(train) == 4 and len(test) == 4
  assert [x.shape[0] for x, _ in _check_batches(test, 6, (32, 32, 3), 10)
         ] == [6, 6, 6, 2]
  _check_batches(train, 8, (32, 32, 3), 10)
  assert image_data.dataset_info(SYN, max_train_examples=32,
                                 max_test_examples=20) == info


@PIPELINES
def test_test_set_is_deterministic_and_train_changes_every_epoch(pipeline):
  train, test, _ = _syn(pipeline)
  test_1, test_2 = _batches(test), _batches(test)
  for (x1, y1), (x2, y2) in zip(test_1, test_2):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  epoch_1, epoch_2 = _batches(train), _batches(train)
  assert not np.array_equal(epoch_1[0][0], epoch_2[0][0])
  # Same seed, new pipeline: the same sequence of epochs.
  again, _, _ = _syn(pipeline)
  np.testing.assert_array_equal(_batches(again)[0][0], epoch_1[0][0])
  # Another seed: another order / augmentation.
  other, _, _ = _syn(pipeline, seed=1)
  assert not np.array_equal(_batches(other)[0][0], epoch_1[0][0])


def _images_of(ds):
  return np.concatenate([x for x, _ in _batches(ds)])


@PIPELINES
def test_each_epoch_is_a_fixed_pass_that_depends_only_on_seed_and_epoch(pipeline):
  train, _, info = _syn(pipeline, mixup_alpha=0.2)
  passes = info.train_epochs
  assert passes.for_dataset(train) is passes.of_epoch
  assert passes.for_dataset(train.take(2)) is None  # Another train set.
  epoch_1 = _images_of(passes.of_epoch(1))
  # Read again, or by a new pipeline (a resumed run): the very same pass.
  np.testing.assert_array_equal(_images_of(passes.of_epoch(1)), epoch_1)
  _, _, again = _syn(pipeline, mixup_alpha=0.2)
  np.testing.assert_array_equal(_images_of(again.train_epochs.of_epoch(1)),
                                epoch_1)
  assert epoch_1.shape == (32, 32, 32, 3)
  # Another epoch or another seed: another order and augmentation.
  assert not np.array_equal(_images_of(passes.of_epoch(2)), epoch_1)
  _, _, other = _syn(pipeline, seed=1, mixup_alpha=0.2)
  assert not np.array_equal(_images_of(other.train_epochs.of_epoch(1)),
                            epoch_1)
  # The stream the training loop feeds fit: the passes one after another.
  stream = _images_of(batching.epoch_stream(passes.of_epoch, 1, 3))
  np.testing.assert_array_equal(
      stream, np.concatenate([epoch_1, _images_of(passes.of_epoch(2))]))
  # Without augmentation a pass is a permutation of the train examples.
  _, _, plain = _syn(pipeline, augment=False)
  first, second = (_images_of(plain.train_epochs.of_epoch(e)) for e in (0, 1))
  by_content = lambda x: x[np.lexsort(x.reshape(len(x), -1).T)]
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(by_content(first), by_content(second))


def test_stateless_shuffle_permutes_each_window_by_its_seed():
  numbers = tf.data.Dataset.range(10)
  shuffle = lambda seed, window: np.array(list(
      batching.stateless_shuffle(numbers, seed, window).as_numpy_iterator()))
  got = shuffle(7, 4)
  for start in (0, 4, 8):  # Windows [0, 4), [4, 8), [8, 10).
    assert sorted(got[start:start + 4]) == list(range(start,
                                                      min(start + 4, 10)))
  np.testing.assert_array_equal(shuffle(tf.constant(7, tf.int64), 4), got)
  whole = [tuple(shuffle(seed, 10)) for seed in range(5)]
  assert len(set(whole)) == 5 and all(sorted(w) == list(range(10))
                                      for w in whole)
  assert batching.num_batches(10, 4) == 2
  assert batching.num_batches(3, 4) == 1 and batching.num_batches(0, 4) == 0


@PIPELINES
def test_augmentation_applied_only_when_asked(pipeline):
  x_train, y_train, _, _ = synthetic.synthetic_frequency_arrays(
      num_train=32, num_test=20)
  # No shuffling (buffer 1), so batches follow the arrays' order.
  plain, _, _ = _syn(pipeline, augment=False, normalize=False,
                     shuffle_buffer=1)
  x, y = _first(plain)
  np.testing.assert_allclose(x, x_train[:8], atol=1e-6)
  np.testing.assert_array_equal(y.argmax(1), y_train[:8])
  # Two epochs without augmentation (and without shuffling): identical.
  np.testing.assert_array_equal(_first(plain)[0], x)

  flipped, _, _ = _syn(pipeline, normalize=False, shuffle_buffer=1,
                       pad_crop=0)
  xf, _ = _first(flipped)
  is_same = [np.allclose(a, b, atol=1e-6) for a, b in zip(xf, x)]
  is_flip = [np.allclose(a, b[:, ::-1], atol=1e-6) for a, b in zip(xf, x)]
  assert all(s or f for s, f in zip(is_same, is_flip))
  assert any(is_flip) and any(is_same)

  cropped, _, _ = _syn(pipeline, normalize=False, shuffle_buffer=1,
                       flip=False)
  xc, _ = _first(cropped)
  assert not np.allclose(xc, x)
  for a, b in zip(xc, x):  # Each image is a window of the reflect-padded one.
    padded = np.pad(b, [(4, 4), (4, 4), (0, 0)], mode='reflect')
    assert any(np.allclose(a, padded[i:i + 32, j:j + 32], atol=1e-6)
               for i in range(9) for j in range(9))


@PIPELINES
def test_normalisation_is_per_channel_standardisation(pipeline):
  train, test, _ = image_data.image_datasets(SYN, batch_size=1000,
                                             augment=False,
                                             max_train_examples=1000,
                                             max_test_examples=1000,
                                             input_pipeline=pipeline)
  # Exact on the train set the statistics come from; close on the test set.
  for ds, tolerance in ((train, 1e-3), (test, 0.1)):
    x, _ = _first(ds)
    assert x.shape[0] == 1000
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=tolerance)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=tolerance)
  raw, _, _ = image_data.image_datasets(SYN, batch_size=1000, augment=False,
                                        normalize=False,
                                        max_train_examples=1000,
                                        max_test_examples=10,
                                        input_pipeline=pipeline)
  assert abs(_first(raw)[0].mean() - 0.5) < 0.05


def test_mixup_function_is_a_convex_combination():
  batch, classes = 6, 8
  images = tf.reshape(tf.range(batch * 4 * 4 * 3, dtype=tf.float32),
                      [batch, 4, 4, 3])
  labels = tf.one_hot(tf.range(batch), classes)
  mixed, mixed_labels = augmentation.mixup(images, labels, 0.4,
                                           tf.constant([3, 4]))
  x, y, mx, my = (t.numpy() for t in (images, labels, mixed, mixed_labels))
  np.testing.assert_allclose(my.sum(1), 1.0, atol=1e-6)
  for i in range(batch):
    lam = my[i, i]
    partners = [j for j in range(batch) if j != i and my[i, j] > 0]
    if not partners:  # Mixed with itself (or lam == 1).
      np.testing.assert_allclose(mx[i], x[i], rtol=1e-5)
      continue
    (j,) = partners
    np.testing.assert_allclose(my[i, j], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(mx[i], lam * x[i] + (1 - lam) * x[j],
                               rtol=1e-5, atol=1e-3)


@PIPELINES
def test_mixup_in_the_pipeline_train_only(pipeline):
  batch = 8
  x_train, y_train, _, _ = synthetic.synthetic_frequency_arrays(
      num_train=32, num_test=20)
  train, test, _ = _syn(pipeline, augment=False, normalize=False,
                        shuffle_buffer=1,
                        mixup_alpha=1.0)
  mixed_any = False
  for b, (x, y) in enumerate(_batches(train)):
    clean_x = x_train[b * batch:(b + 1) * batch]
    clean_y = np.eye(10, dtype=np.float32)[y_train[b * batch:(b + 1) * batch]]
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    for out_x, out_y in zip(x, y):
      # out = lam * x_a + (1 - lam) * x_b for some a, b of the same batch.
      best = np.inf
      for a in range(batch):
        for c in range(batch):
          diff = clean_x[a] - clean_x[c]
          denom = (diff**2).sum()
          lam = 1.0 if denom == 0 else (
              ((out_x - clean_x[c]) * diff).sum() / denom)
          if not -1e-4 <= lam <= 1 + 1e-4:
            continue
          error = np.abs(out_x - lam * clean_x[a] - (1 - lam) * clean_x[c])
          label_error = np.abs(out_y - lam * clean_y[a] -
                               (1 - lam) * clean_y[c])
          best = min(best, error.max() + label_error.max())
      assert best < 1e-3
      mixed_any |= out_y.max() < 0.99
  assert mixed_any  # Labels are not one-hot any more.
  _check_batches(test, batch, (32, 32, 3), 10, one_hot=True)


@PIPELINES
def test_bad_arguments(pipeline):
  with pytest.raises(ValueError, match='pad_crop'):
    _syn(pipeline, pad_crop=32)
  with pytest.raises(ValueError, match='mixup_alpha'):
    _syn(pipeline, mixup_alpha=-1.0)


def test_input_pipeline_choice():
  # 'auto' on the TensorFlow backend (this process): tf.data.
  train, test, _ = _syn('auto')
  assert isinstance(train, tf.data.Dataset)
  assert isinstance(test, tf.data.Dataset)
  train, test, _ = _syn('numpy')
  assert isinstance(train, array_batches.ArrayBatches)
  assert isinstance(test, keras.utils.PyDataset)
  with pytest.raises(ValueError, match='input_pipeline must be one of'):
    _syn('arrays')


def test_numpy_pipeline_is_not_for_tfds_sets():
  with pytest.raises(ValueError, match="input_pipeline='numpy' is for the "
                     r"in-memory sets .* and image folders; 'cifar10' is "
                     'read by tf.data'):
    image_data.image_datasets('cifar10', batch_size=2,
                              input_pipeline='numpy')


def test_numpy_batches_take_skip_and_concatenate_like_tf_data():
  _, _, info = _syn('numpy')
  first, second = (info.train_epochs.of_epoch(e) for e in (0, 1))
  whole = _images_of(first)
  np.testing.assert_array_equal(_images_of(first.take(2)), whole[:16])
  np.testing.assert_array_equal(_images_of(first.skip(3)), whole[24:])
  assert len(first.skip(9)) == 0 and len(first.take(9)) == 4
  np.testing.assert_array_equal(
      _images_of(first.skip(2).concatenate(second)),
      np.concatenate([whole[16:], _images_of(second)]))
  _, _, other = _syn('numpy')
  with pytest.raises(ValueError, match='same BatchPlan'):
    first.concatenate(other.train_epochs.of_epoch(0))


# ----------------------------------------------------------------------------
# The synthetic data set itself.


def test_synthetic_arrays_deterministic_balanced_and_prefix_stable():
  a = synthetic.synthetic_frequency_arrays(num_train=200, num_test=50, seed=3)
  b = synthetic.synthetic_frequency_arrays(num_train=200, num_test=50, seed=3)
  c = synthetic.synthetic_frequency_arrays(num_train=200, num_test=50, seed=4)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert not np.allclose(a[0], c[0])
  x_train, y_train, x_test, y_test = a
  assert x_train.shape == (200, 32, 32, 3) and x_test.shape == (50, 32, 32, 3)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int64
  assert np.bincount(y_train, minlength=10).tolist() == [20] * 10
  assert np.bincount(y_test, minlength=10).tolist() == [5] * 10
  # Global NumPy RNG state plays no part.
  np.random.seed(123)
  np.testing.assert_array_equal(
      synthetic.synthetic_frequency_arrays(num_train=200, num_test=50,
                                           seed=3)[0], x_train)
  # The first examples do not depend on the split sizes.
  small = synthetic.synthetic_frequency_arrays(num_train=37, num_test=7, seed=3)
  np.testing.assert_array_equal(small[0], x_train[:37])
  np.testing.assert_array_equal(small[3], y_test[:7])
  counts = np.bincount(small[1], minlength=10)
  assert counts.max() - counts.min() <= 1
  # Other sizes.
  x, y, _, _ = synthetic.synthetic_frequency_arrays(
      num_train=12, num_test=3, num_classes=4, image_size=20)
  assert x.shape == (12, 20, 20, 3) and set(y.tolist()) == {0, 1, 2, 3}


def _radial_fft_features(images, num_bins=32):
  size = images.shape[1]
  window = np.outer(np.hanning(size), np.hanning(size))[None, :, :, None]
  centred = images - images.mean(axis=(1, 2), keepdims=True)
  magnitude = np.abs(np.fft.fft2(centred * window, axes=(1, 2))).sum(-1)
  freq = np.fft.fftfreq(size)
  radius = np.sqrt(freq[:, None]**2 + freq[None, :]**2)
  bins = np.minimum((radius / 0.5 * num_bins).astype(int), num_bins)
  features = np.stack([magnitude[:, bins == b].mean(1)
                       for b in range(num_bins + 1) if (bins == b).any()], 1)
  features = np.log1p(features)
  return features / np.linalg.norm(features, axis=1, keepdims=True)


def _nearest_centroid_accuracy(train_features, y_train, test_features,
                               y_test, num_classes):
  centroids = np.stack([train_features[y_train == k].mean(0)
                        for k in range(num_classes)])
  distances = ((test_features[:, None] - centroids[None])**2).sum(-1)
  return float((distances.argmin(1) == y_test).mean())


def test_synthetic_classes_differ_only_in_frequency():
  x_train, y_train, x_test, y_test = synthetic.synthetic_frequency_arrays(
      num_train=2000, num_test=500)
  spectrum = _nearest_centroid_accuracy(
      _radial_fft_features(x_train), y_train, _radial_fft_features(x_test),
      y_test, 10)
  mean_colour = _nearest_centroid_accuracy(
      x_train.mean(axis=(1, 2)), y_train, x_test.mean(axis=(1, 2)), y_test,
      10)
  pool = lambda x: x.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4))
  pooled = _nearest_centroid_accuracy(
      _radial_fft_features(pool(x_train), 16), y_train,
      _radial_fft_features(pool(x_test), 16), y_test, 10)
  assert spectrum > 0.6, spectrum
  assert mean_colour < 0.2, mean_colour
  # Resolution matters: half the resolution loses the high-frequency classes.
  assert pooled < spectrum - 0.1, (pooled, spectrum)
  bands = synthetic.synthetic_frequency_bands(10)
  assert bands.shape == (10, 2) and bands.min() > 0 and bands.max() < 0.5
  assert np.all(bands[1:, 0] < bands[:-1, 1])  # Slight overlap...
  assert np.all(bands[2:, 0] > bands[:-2, 1])  # ...of neighbours only.


# ----------------------------------------------------------------------------
# Image folders.


def _write_folder(root, classes, per_class, size=(40, 48)):
  colours = {}
  for k, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    colour = np.zeros(3, np.uint8)
    colour[k % 3] = 200  # Class k is a plain colour: checks the labels.
    colours[name] = colour
    for i in range(per_class):
      image = np.broadcast_to(colour, size + (3,)).copy()
      image[0, 0] = i  # Distinct files.
      tf.io.write_file(os.path.join(root, name, f'{i}.png'),
                       tf.io.encode_png(image))
  return colours


def _check_folder_labels(ds, classes):
  for x, y in _batches(ds):
    for image, label in zip(x, y):
      k = int(label.argmax())
      dominant = int(image[8:24, 8:24].mean(axis=(0, 1)).argmax())
      assert dominant == k % 3, (classes[k], image.mean(axis=(0, 1)))


@PIPELINES
def test_folder_with_holdout(tmp_path, pipeline):
  classes = ['ant', 'bee', 'cat']
  _write_folder(str(tmp_path), classes, per_class=10)
  name = 'folder:' + str(tmp_path)
  train, test, info = image_data.image_datasets(name, batch_size=4,
                                                normalize=False,
                                                input_pipeline=pipeline)
  assert isinstance(train, array_batches.ArrayBatches) == (
      pipeline == 'numpy')
  assert info.num_classes == 3 and info.image_shape == (32, 32, 3)
  assert info.num_train_examples == 24 and info.num_test_examples == 6
  assert len(train) == 6 and len(test) == 2
  _check_batches(train, 4, (32, 32, 3), 3)
  _check_batches(test, 4, (32, 32, 3), 3)
  _check_folder_labels(train, classes)
  _check_folder_labels(test, classes)
  np.testing.assert_array_equal(_first(test)[0], _first(test)[0])
  assert image_data.dataset_info(name) == info
  # Read in one order at every pass, even uncached: fixed epoch passes.
  _, _, uncached = image_data.image_datasets(name, batch_size=4, cache=False,
                                             input_pipeline=pipeline)
  np.testing.assert_array_equal(_images_of(uncached.train_epochs.of_epoch(3)),
                                _images_of(uncached.train_epochs.of_epoch(3)))
  # Normalised with the train folder's statistics; other size and fraction.
  train, test, info = image_data.image_datasets(name, batch_size=30,
                                                image_size=16, test_split=0.1,
                                                augment=False,
                                                input_pipeline=pipeline)
  assert info.image_shape == (16, 16, 3) and info.num_test_examples == 3
  x, _ = _first(train)
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)


@PIPELINES
def test_folder_with_separate_test_folder(tmp_path, pipeline):
  classes = ['a', 'b']
  _write_folder(str(tmp_path / 'train'), classes, per_class=5)
  _write_folder(str(tmp_path / 'test'), classes, per_class=3)
  name = f'folder:{tmp_path / "train"},{tmp_path / "test"}'
  train, test, info = image_data.image_datasets(name, batch_size=4,
                                                image_size=(24, 20),
                                                mixup_alpha=0.3,
                                                input_pipeline=pipeline)
  assert info.num_classes == 2 and info.image_shape == (24, 20, 3)
  assert (info.num_train_examples, info.num_test_examples) == (10, 6)
  _check_batches(train, 4, (24, 20, 3), 2, one_hot=False)
  _check_batches(test, 4, (24, 20, 3), 2, one_hot=True)
  (tmp_path / 'other' / 'a').mkdir(parents=True)
  (tmp_path / 'other' / 'c').mkdir()
  tf.io.write_file(str(tmp_path / 'other' / 'a' / 'x.png'),
                   tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)))
  with pytest.raises(ValueError, match='must match'):
    image_data.image_datasets(
        f'folder:{tmp_path / "train"},{tmp_path / "other"}')


@pytest.mark.parametrize('size, target', [((40, 48), (32, 32)),
                                          ((17, 61), (24, 20)),
                                          ((9, 7), (32, 32)),
                                          ((32, 32), (32, 32))])
def test_folder_images_decode_as_keras_does(tmp_path, size, target):
  """Pillow + NumPy decoding (both pipelines) against TensorFlow's decoders
  and Keras' smart_resize: PNG equal; JPEG against TensorFlow's accurate
  integer DCT within one grey level (equal on the machines tried; the
  libjpeg builds of Pillow and TensorFlow are separate, and TensorFlow's
  default fast DCT differs by up to 7 levels here)."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  for ext, encode in (('png', tf.io.encode_png), ('jpg', tf.io.encode_jpeg)):
    path = str(tmp_path / f'x.{ext}')
    tf.io.write_file(path, encode(image))
    data = tf.io.read_file(path)
    decoded = (tf.io.decode_png(data, channels=3) if ext == 'png' else
               tf.io.decode_jpeg(data, channels=3,
                                 dct_method='INTEGER_ACCURATE'))
    expected = keras.preprocessing.image.smart_resize(
        decoded, target, interpolation='bilinear').numpy()
    got = image_folders.read_image_file(path, target)
    assert got.shape == target + (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=1e-3 if ext == 'png' else 1.0)
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  with pytest.raises(ValueError, match='bad.png is not an image'):
    image_folders.read_image_file(str(tmp_path / 'bad.png'), (8, 8))


def test_folder_pipelines_give_the_same_test_batches(tmp_path):
  _write_folder(str(tmp_path), ['a', 'b', 'c'], per_class=6)
  name = f'folder:{tmp_path}'
  batches = [_batches(image_data.image_datasets(
      name, batch_size=4, input_pipeline=pipeline)[1])
             for pipeline in ('tf.data', 'numpy')]
  assert len(batches[0]) == len(batches[1]) == 1
  for (x1, y1), (x2, y2) in zip(*batches):
    np.testing.assert_allclose(x1, x2, atol=1e-5)
    np.testing.assert_array_equal(y1, y2)


def test_bad_folders_raise(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='empty.*class_a') as error:
    image_data.image_datasets(f'folder:{empty}')
  assert str(empty) in str(error.value)
  flat = tmp_path / 'flat'
  flat.mkdir()
  tf.io.write_file(str(flat / 'x.png'),
                   tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)))
  with pytest.raises(ValueError, match='no class sub-folders'):
    image_data.image_datasets(f'folder:{flat}')
  no_images = tmp_path / 'no_images'
  (no_images / 'a').mkdir(parents=True)
  with pytest.raises(ValueError, match='no images'):
    image_data.image_datasets(f'folder:{no_images}')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    image_data.image_datasets(f'folder:{tmp_path / "missing"}')


# ----------------------------------------------------------------------------
# Sources: one object describes a dataset (no data read) and loads it.

# Every kind of image source: (name, gin bindings of image_datasets) on top of
# the test's folders and TFDS's mock data.
_SOURCE_KINDS = {
    'synthetic': (SYN, {'image_size': 16, 'max_train_examples': 30,
                        'max_test_examples': 10}),
    'folder': ('folder:{tmp}/one', {'test_split': 0.3, 'image_size': 20}),
    'train_and_test_folders': ('folder:{tmp}/train,{tmp}/test', {}),
    # TFDS: describe() has the full split sizes, so the examples are cut
    # below the mock's 10 (see test_tfds_counts_are_measured_when_loaded).
    'cifar10': ('cifar10', {'image_size': 48, 'max_train_examples': 6,
                            'max_test_examples': 4}),
    'imagenet2012': ('imagenet2012', {'image_size': 64,
                                      'max_train_examples': 6,
                                      'max_test_examples': 4}),
}


def _bind_source_kind(kind, tmp_path):
  """Binds `image_datasets` to a source of `kind`; returns its name."""
  name, bindings = _SOURCE_KINDS[kind]
  name = name.format(tmp=tmp_path)
  if kind == 'folder':
    _write_folder(str(tmp_path / 'one'), ['ant', 'bee', 'cat'], per_class=10)
  elif kind == 'train_and_test_folders':
    _write_folder(str(tmp_path / 'train'), ['a', 'b'], per_class=5)
    _write_folder(str(tmp_path / 'test'), ['a', 'b'], per_class=3)
  gin.bind_parameter('image_datasets.name', name)
  gin.bind_parameter('image_datasets.batch_size', 4)
  for parameter, value in bindings.items():
    gin.bind_parameter(f'image_datasets.{parameter}', value)
  return name


@pytest.mark.parametrize('kind', sorted(_SOURCE_KINDS))
def test_dry_run_info_is_the_loaded_info(kind, tmp_path, monkeypatch):
  name = _bind_source_kind(kind, tmp_path)
  with tfds.testing.mock_data(num_examples=10):
    described = image_data.dataset_info()  # What train(dry_run=True) uses.
    train, test, info = image_data.image_datasets()
    assert info == described and info.name == name
    assert sum(len(x) for x, _ in _batches(train)) <= (
        info.num_train_examples)
    assert sum(len(x) for x, _ in _batches(test)) == info.num_test_examples
    assert _first(test)[0].shape[1:] == info.image_shape
    source = image_data.image_source(name, **_SOURCE_KINDS[kind][1])
    source_testing.assert_load_info_comes_from_describe(
        source, described, monkeypatch)


def test_describe_reads_no_data(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError('describe() read data.')

  monkeypatch.setattr(synthetic.SyntheticFrequencySettings, 'arrays', no_data)
  monkeypatch.setattr(keras.utils, 'image_dataset_from_directory', no_data)
  monkeypatch.setattr(tfds, 'builder', no_data)
  for kind in sorted(_SOURCE_KINDS):
    gin.clear_config()
    name = _bind_source_kind(kind, tmp_path / kind)
    assert image_data.dataset_info().name == name
  # Settings errors show in a dry run too, with the loading's messages.
  gin.clear_config()
  gin.parse_config([f"image_datasets.name = '{SYN}'",
                    'image_datasets.pad_crop = 32'])
  with pytest.raises(ValueError, match='pad_crop must be in'):
    image_data.dataset_info()
  gin.parse_config(['image_datasets.pad_crop = 4',
                    'synthetic_frequency_arrays.num_classes = 1'])
  with pytest.raises(ValueError, match='num_classes must be >= 2'):
    image_data.dataset_info()


def test_tfds_counts_are_measured_when_loaded():
  with tfds.testing.mock_data(num_examples=10):
    source = image_data.image_source('cifar100')
    described, loaded = source.describe(), source.load().info
  assert (described.num_train_examples, described.num_test_examples) == (
      50_000, 10_000)  # The full splits.
  assert loaded == described.with_counts(10, 10)  # The mock's.


def test_describe_only_and_settings_only_are_not_bindable():
  for binding in ('image_datasets.describe_only = True',
                  'synthetic_frequency_arrays.settings_only = True'):
    with pytest.raises(ValueError, match='denylisted'):
      gin.parse_config(binding)


def test_synthetic_settings_generate_what_they_describe():
  settings = synthetic.synthetic_frequency_arrays(
      num_train=12, num_test=5, num_classes=3, image_size=8,
      settings_only=True)
  assert settings == synthetic.SyntheticFrequencySettings(12, 5, 3, 8, 0)
  x_train, y_train, x_test, _ = settings.arrays()
  assert x_train.shape == (12,) + settings.image_shape
  assert x_test.shape == (5,) + settings.image_shape
  assert set(y_train.tolist()) == {0, 1, 2}
  for a, b in zip(settings.arrays(), synthetic.synthetic_frequency_arrays(
      num_train=12, num_test=5, num_classes=3, image_size=8)):
    np.testing.assert_array_equal(a, b)


def test_data_modules_share_only_public_names_and_do_not_query_gin():
  """No data module reads another's `_private` names; gin only decorates."""
  package = os.path.dirname(sources.__file__)
  modules = [f[:-3] for f in os.listdir(package) if f.endswith('.py')]
  for module in modules:
    with open(os.path.join(package, module + '.py')) as f:
      tree = ast.parse(f.read())
    siblings = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
          'diffstride.experiments.data'):
        for alias in node.names:
          assert not alias.name.startswith('_'), (module, alias.name)
          siblings.add(alias.asname or alias.name)
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id in siblings:
          assert not node.attr.startswith('_'), (module, node.attr)
        if node.value.id == 'gin':
          assert node.attr == 'configurable', (module, node.attr)


# ----------------------------------------------------------------------------
# Gin.


def test_gin_bindings():
  gin.parse_config([
      f"image_datasets.name = '{SYN}'",
      'image_datasets.batch_size = 5',
      'image_datasets.augment = False',
      'synthetic_frequency_arrays.num_train = 25',
      'synthetic_frequency_arrays.num_test = 7',
      'synthetic_frequency_arrays.image_size = 16',
  ])
  info = image_data.dataset_info()
  assert info == sources.DatasetInfo(SYN, 10, (16, 16, 3), 25, 7)
  train, test, built_info = image_data.image_datasets()
  assert built_info == info
  assert len(train) == 5 and train.element_spec[0].shape[0] == 5
  _check_batches(test, 5, (16, 16, 3), 10)
