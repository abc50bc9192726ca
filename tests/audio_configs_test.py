"""The audio gin configs: complete, parseable, pointing at the right data and
downsampling; the audio quick start learns time and frequency strides.

(`tests/training_test.py` trains two steps of every audio config.)"""

import glob
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import pytest
import tensorflow as tf

import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride import methods
from diffstride.experiments.data import audio as audio_data
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

GIN_DIR = gin_testing.GIN_DIR
TASKS = {  # gin directory: (dataset name, number of classes)
    'speech_commands': ('speech_commands', 12),
    'emotion': ('crema_d', 6),
    'language': ('voxforge', 6),
    'speaker': ('voxceleb', 1252),
    'music_instrument': ('nsynth_instrument', 11),
    'music_pitch': ('nsynth_pitch', 128),
    'acoustic_scenes': ('folder:', None),
    'birdsong': ('folder:', None),
}
# The paper's three methods; what each binds comes from the registry.
METHODS = ('strided_conv', 'spectral_pooling', 'diffstride', 'blurpool',
           'dct_diffstride')




def test_every_task_has_every_audio_method():
  found = {os.path.relpath(p, GIN_DIR) for p in
           glob.glob(os.path.join(GIN_DIR, 'audio', '*', '*.gin'))}
  expected = {f'audio/{t}/{m}.gin' for t in TASKS for m in METHODS}
  assert expected <= found
  assert os.path.exists(os.path.join(GIN_DIR, 'quickstart_audio.gin'))


@pytest.mark.parametrize('task', sorted(TASKS))
@pytest.mark.parametrize('method', sorted(METHODS))
def test_config_points_at_its_data_and_downsampling(task, method):
  gin_testing.parse(f'audio/{task}/{method}.gin')
  name, num_classes = TASKS[task]
  bound = gin.query_parameter('audio_datasets.name')
  assert bound.startswith(name) if name.endswith(':') else bound == name
  pooling_cls = gin.query_parameter('resnet18.pooling_cls')
  expected = methods.get(method).layer_name
  if expected is None:
    assert pooling_cls is None
  else:
    assert pooling_cls.selector == expected
  assert gin.query_parameter('train.model_fn').selector == 'audio_classifier'
  assert gin.query_parameter('audio_classifier.backbone_fn').selector == (
      'resnet18')
  assert gin.query_parameter('mel_frontend.num_mel_bins') == 40
  if num_classes is not None:  # TFDS: the dry-run description, no data.
    info = audio_data.audio_dataset_info()
    assert (info.name, info.num_classes, info.image_shape) == (
        name, num_classes, (16000,))


def test_audio_quick_start_learns_time_and_frequency_strides(tmp_path):
  workdir = str(tmp_path)
  gin_testing.parse('quickstart_audio.gin', [
      'EPOCHS = 1', 'train.max_steps_per_epoch = 4',
      'train.max_eval_steps = 1', 'train.verbose = 0',
      'audio_datasets.max_train_examples = 128',
      'audio_datasets.max_test_examples = 32',
      f"train.workdir = '{workdir}'"])
  metrics = training.train()
  # Time-shift consistency ('auto': 10 ms = 160 samples at 16 kHz) on the
  # evaluated batch of 32 clips.
  shift = metrics['shift_consistency']
  assert (shift['max_shift'], shift['unit'], shift['num_examples']) == (
      160, 'samples', 32)
  assert 0 <= shift['circular'] <= 1 and 0 <= shift['crop_pad'] <= 1
  strides = metrics['learned_strides']
  assert len(strides) == 3  # Stem and two downsampling stages.
  initial = {1.0, 2.0, 100 / 96, 40 / 36}
  moved = [v for pair in strides.values() for v in pair
           if min(abs(v - i) for i in initial) > 1e-4]
  assert moved, strides
  lines = [json.loads(l) for l in
           open(os.path.join(workdir, 'time_frequency_strides.jsonl'))]
  assert [l['epoch'] for l in lines] == [0, 1]
  for name, pair in lines[-1]['strides'].items():
    assert [pair['time'], pair['frequency']] == strides[name]
  tags = set()
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'time_frequency',
                                     'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {f'strides/{n}/time' for n in strides} <= tags
  assert {f'strides/{n}/frequency' for n in strides} <= tags
