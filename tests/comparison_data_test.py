"""The comparison's real-image data sets, 'digits' and 'textures': shapes,
classes, disjoint splits, normalisation, determinism. No training."""

import numpy as np
import pytest

from diffstride.experiments.data import images
from diffstride.experiments.data import packaged


@pytest.fixture(scope='module')
def digits():
  return packaged.digits_arrays()


@pytest.fixture(scope='module')
def textures():
  return packaged.textures_arrays()


def test_digits_shapes_classes_and_stratified_split(digits):
  x_train, y_train, x_test, y_test = digits
  assert x_train.shape == (1347, 32, 32, 1) and x_test.shape == (450, 32, 32, 1)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int64
  assert 0.0 <= x_train.min() and x_train.max() <= 1.0
  assert set(y_train) == set(y_test) == set(range(10))
  # Stratified: each class' test share within one example of 450 / 1797.
  all_counts = np.bincount(np.concatenate([y_train, y_test]))
  expected = all_counts * 450 / 1797
  assert np.all(np.abs(np.bincount(y_test) - expected) < 1)
  # Disjoint: no test image is a train image.
  train_rows = {row.tobytes() for row in x_train}
  assert sum(row.tobytes() in train_rows for row in x_test) <= 2  # duplicates
  # Bilinear, not repeated pixels: a 4x4 block of the output is not constant.
  blocks = x_train[:, 12:16, 12:16, 0].reshape(len(x_train), -1)
  assert np.mean(blocks.std(axis=1) > 0) > 0.5


def test_digits_bilinear_keeps_the_8x8_content():
  x, y = packaged.digits_images(32, 'bilinear')
  nearest, same_y = packaged.digits_images(32, 'nearest')
  assert np.array_equal(y, same_y) and x.shape == (1797, 32, 32, 1)
  # Averaging 4x4 blocks gives back about the 8x8 digits.
  pooled = x.reshape(1797, 8, 4, 8, 4).mean(axis=(2, 4))
  original = nearest[:, ::4, ::4, 0]
  assert np.abs(pooled - original).mean() < 0.1


def test_textures_shapes_classes_and_normalisation(textures):
  x_train, y_train, x_test, y_test = textures
  assert x_train.shape == (3000, 32, 32, 1) and x_test.shape == (1200, 32, 32, 1)
  assert np.array_equal(np.bincount(y_train), [500] * 6)
  assert np.array_equal(np.bincount(y_test), [200] * 6)
  assert len(packaged.TEXTURE_PHOTOS) == 6
  for x in (x_train, x_test):
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    std = x.std(axis=(1, 2, 3))
    # Unit std, except near-flat patches (divided by 1/255 instead).
    assert np.mean(np.abs(std - 1) < 1e-3) > 0.95
    assert np.all(std <= 1 + 1e-3)
  # The class is not in the brightness: class means are all ~0.
  for label in range(6):
    assert abs(x_train[y_train == label].mean()) < 1e-4


def test_texture_patches_come_from_disjoint_rows(monkeypatch):
  """Every train patch lies in the top 70% of its photo's rows, every test
  patch in the bottom 30%: they share no pixel."""
  assert packaged.texture_regions(512, 0.7, 32) == ((0, 358), (358, 512))
  cut = []

  def recording(rows, width, count, patch_size, rng):
    top, left = packaged.patch_positions.__wrapped__(rows, width, count,
                                                     patch_size, rng)
    cut.append((rows, top, left, width))
    return top, left

  recording.__wrapped__ = packaged.patch_positions
  monkeypatch.setattr(packaged, 'patch_positions', recording)
  x_train, _, x_test, _ = packaged.textures_arrays(num_train=600,
                                                   num_test=300)
  assert len(cut) == 2 * len(packaged.TEXTURE_PHOTOS)  # (train, test) each.
  for (train_rows, train_top, train_left, width), (test_rows, test_top,
                                                   test_left, _) in zip(
                                                       cut[::2], cut[1::2]):
    assert train_rows[0] == 0 and train_rows[1] == test_rows[0]
    assert train_top.min() >= 0 and train_top.max() + 32 <= test_rows[0]
    assert test_top.min() >= test_rows[0] and test_top.max() + 32 <= \
        test_rows[1]
    for left in (train_left, test_left):
      assert left.min() >= 0 and left.max() + 32 <= width
  with pytest.raises(ValueError, match='no room'):
    packaged.texture_regions(40, 0.7, 32)


def test_cut_patches_reads_inside_its_rows():
  photo = np.zeros((100, 50), np.float32)
  photo[60:] = np.random.default_rng(0).normal(size=(40, 50))
  # Rows [0, 60) are flat: every patch cut there is flat (std 0).
  flat = packaged.cut_patches(photo, (0, 60), 200, 16,
                              np.random.default_rng(0))
  assert np.all(flat == 0)
  textured = packaged.cut_patches(photo, (60, 100), 200, 16,
                                  np.random.default_rng(0))
  np.testing.assert_allclose(textured.std(axis=(1, 2)), 1, atol=1e-4)


def test_determinism(digits, textures):
  for made, again in ((digits, packaged.digits_arrays()),
                      (textures, packaged.textures_arrays())):
    for a, b in zip(made, again):
      assert np.array_equal(a, b)
  other = packaged.textures_arrays(seed=1)
  assert not np.array_equal(other[0], textures[0])
  assert not np.array_equal(packaged.digits_arrays(seed=1)[1], digits[1])


@pytest.mark.parametrize('name,shape,classes', [('digits', (32, 32, 1), 10),
                                                ('textures', (32, 32, 1), 6)])
def test_image_datasets_pipelines(name, shape, classes):
  info = images.dataset_info(name)
  assert info.image_shape == shape and info.num_classes == classes
  train, test, info = images.image_datasets(
      name, batch_size=32, max_train_examples=128, max_test_examples=40)
  assert info.num_train_examples == 128 and info.num_test_examples == 40
  assert len(train) == 4 and len(test) == 2
  x, y = next(iter(train))
  assert x.shape == (32,) + shape and y.shape == (32, classes)
  # Normalised with the train set's statistics.
  assert abs(float(np.mean(x))) < 0.3 and 0.5 < float(np.std(x)) < 1.5
  # Deterministic given the seed, train and test alike.
  again, test_again, _ = images.image_datasets(
      name, batch_size=32, max_train_examples=128, max_test_examples=40)
  assert np.array_equal(x, next(iter(again))[0])
  assert np.array_equal(next(iter(test))[0], next(iter(test_again))[0])
  with pytest.raises(ValueError, match='no named splits'):
    images.image_datasets(name, train_split='train')


def test_textures_patch_size_follows_image_size():
  info = images.dataset_info('textures', image_size=48)
  assert info.image_shape == (48, 48, 1)
