"""Bad configurations stop a run with an error naming the culprit, early.

Each case goes through the real training entry point with the quick start's
config plus one bad binding, and must fail before any training state is
written to the workdir.
"""

import os

import pytest

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order



def _parse(binding):
  """The quick start plus `binding` (several separated by ';')."""
  gin_testing.parse(
      'quickstart.gin',
      ['train.verbose = 0', 'train.max_steps_per_epoch = 1'] +
      binding.split(';'))


@pytest.mark.parametrize('binding, error, message', [
    ("train.epochs = 'ten'", ValueError, r'train\.epochs must be a whole'),
    ('train.epochs = 0', ValueError, r'train\.epochs must be a whole'),
    ('train.label_smoothing = 1.5', ValueError, r'train\.label_smoothing'),
    ('train.backup_every_steps = 2.5', ValueError,
     r'train\.backup_every_steps'),
    ("train.mixed_precision = 'float8'", ValueError,
     r'train\.mixed_precision must be one of'),
    ('train.complexity_weight = -1.0', ValueError, r'train\.complexity_weight'),
    ("train.on_nonfinite = 'ignore'", ValueError,
     r"train\.on_nonfinite must be one of \('stop', 'skip'\)"),
    ('train.max_consecutive_skips = -1', ValueError,
     r'train\.max_consecutive_skips'),
    ('train.shift_consistency_max_shift = -2', ValueError,
     r'train\.shift_consistency_max_shift'),
    ("Resnet.pooling_cls = 'NoSuchPool'", ValueError,
     r"Unknown pooling_cls 'NoSuchPool'"),
    ('DiffStride.smoothness_factor = -1.0', ValueError, 'smoothness_factor'),
    ('Resnet.strides = [1, 1, 0.5, 2]', ValueError, r'`strides` must be >= 1'),
    ("learning_rate.schedule = 'warp'", ValueError, "Unknown `schedule`"),
    ("optimizer.name = 'adamw2'", ValueError, 'Unknown optimizer'),
    ('image_datasets.batch_size = -3', ValueError, 'batch_size'),
    # 4x4 images: the first DiffStride's map is not larger than its ramp.
    ('image_datasets.image_size = 4; image_datasets.augment = False',
     ValueError, 'too small'),
    ("image_datasets.name = 'cifar11'", ValueError, 'cifar11'),
    ("make_strategy.name = 'data_parallel'", ValueError,
     'keras.distribution, which Keras .* implements for JAX only'),
])
def test_bad_binding_fails_before_training(binding, error, message, tmp_path):
  _parse(binding)
  workdir = str(tmp_path / 'run')
  with pytest.raises(error, match=message):
    training.train(workdir=workdir)
  assert not os.path.exists(os.path.join(workdir, 'backup'))
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))


def test_empty_image_folder(tmp_path):
  empty = tmp_path / 'images'
  empty.mkdir()
  _parse(f"image_datasets.name = 'folder:{empty}'")
  with pytest.raises(ValueError, match='is empty. Expected layout'):
    training.train(workdir=str(tmp_path / 'run'))


def test_unknown_gin_name_is_reported_by_gin():
  with pytest.raises(ValueError, match="No configurable matching 'trian'"):
    _parse('trian.epochs = 3')
