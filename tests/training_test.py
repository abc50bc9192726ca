"""The experiment harness: every gin file trains, runs resume, the CLI works.

Real parts only: the real training loop, real tf.data pipelines (CIFAR and
ImageNet through `tfds.testing.mock_data`, the built-in synthetic set), real
checkpoints and TensorBoard event files, a real MirroredStrategy.
"""

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import wave

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from diffstride import methods
import diffstride.experiments  # Registers the configurables.  # pylint: disable=unused-import
from diffstride.experiments.data import images as data
from diffstride.experiments import keras_internals
from diffstride.experiments import rerun_guard
from diffstride.experiments import training

import gin_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order
import workdir_testing  # pylint: disable=g-bad-import-order
import train_runs  # pylint: disable=g-bad-import-order

ROOT = gin_testing.ROOT
GIN_DIR = gin_testing.GIN_DIR
EXPERIMENTS = sorted(
    os.path.relpath(p, GIN_DIR)
    for p in glob.glob(os.path.join(GIN_DIR, '**', '*.gin'), recursive=True)
    if os.sep + 'base' + os.sep not in p)

# Tiny runs: one epoch of two steps, small batches; the configs' models and
# pipelines are otherwise untouched.
SMOKE_BINDINGS = [
    'train.epochs = 1',
    'train.max_steps_per_epoch = 2',
    'train.max_eval_steps = 1',
    'train.verbose = 0',
    'image_datasets.batch_size = 4',
    'image_datasets.max_train_examples = 16',
    'image_datasets.max_test_examples = 8',
    # Measured where it is tested (test_strides_move_and_are_logged,
    # tests/consistency_test.py, tests/audio_configs_test.py).
    'train.shift_consistency_max_shift = 0',
]
# Audio configs (gin/audio/**, gin/quickstart_audio.gin): the same tiny runs;
# configs that read a folder of WAV files get one written by the test.
AUDIO_SMOKE_BINDINGS = [
    'audio_datasets.batch_size = 4',
    'audio_datasets.max_train_examples = 16',
    'audio_datasets.max_test_examples = 8',
    # 0.25 s windows (25 x 40 spectrograms) keep CPU time low.
    'audio_datasets.window_seconds = 0.25',
    'audio_classifier.window_seconds = 0.25',
    # Two windows of each test clip (NSynth's 4 s notes would be 16).
    'audio_datasets.max_eval_seconds = 0.5',
]


# An experiment's gin file is its family's recipe, one method
# (`include 'base/<method>.gin'`) and its dataset's lines, or (digits,
# textures) the built-in config of its method (`include 'builtin/<method>.gin'`)
# and its dataset's lines. Each method trains below on the built-in data,
# ImageNet (the most distinct network: 7 x 7 stem, max pooling) and one audio
# task; each dataset trains with one method (`_DATA_TRAINED_WITH`). A
# (dataset, method) pair whose two parts both trained there is checked by
# `test_every_other_experiment_composes_trained_parts` (same lines, model
# built) instead of training again.
_SPEECH = f'audio{os.sep}speech_commands'
_METHOD_TRAINED_ON = {'cifar10': 'imagenet', 'cifar100': 'imagenet',
                      'digits': 'builtin', 'textures': 'builtin',
                      **{f'audio{os.sep}{task}': _SPEECH
                         for task in ('acoustic_scenes', 'birdsong', 'emotion',
                                      'language', 'music_instrument',
                                      'music_pitch', 'speaker')}}


def _data_trained_with(family):
  """The method a family's data trains with: DiffStride, but strided
  convolutions (the cheapest) for the audio tasks whose DiffStride config is
  composed of speech commands' and theirs."""
  return ('strided_conv.gin' if family.startswith('audio' + os.sep)
          and family != _SPEECH else 'diffstride.gin')


def _composed_of(gin_file):
  """(gin file trained with the same method, gin file trained on the same
  data) when `gin_file` is not trained itself, else None."""
  family, method = os.path.split(gin_file)
  if family not in _METHOD_TRAINED_ON or method == _data_trained_with(family):
    return None
  return (os.path.join(_METHOD_TRAINED_ON[family], method),
          os.path.join(family, _data_trained_with(family)))


TRAINED = [f for f in EXPERIMENTS if _composed_of(f) is None]
COMPOSED = [f for f in EXPERIMENTS if _composed_of(f) is not None]


def _is_audio(gin_file):
  return gin_file.startswith('audio' + os.sep) or 'audio' in os.path.basename(
      gin_file)


def _wav_class_folders(root, rate=44100, per_class=8, seconds=0.6):
  """Two class folders of 16-bit PCM tones at `rate` (resampled on read)."""
  for label, freq in (('a', 440.0), ('b', 1760.0)):
    os.makedirs(os.path.join(root, label))
    for i in range(per_class):
      t = np.arange(int(seconds * rate)) / rate
      pcm = (0.3 * np.sin(2 * np.pi * freq * t + i) * 32767).astype('<i2')
      with wave.open(os.path.join(root, label, f'{i}.wav'), 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
  return root




def _check_workdir(workdir):
  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert os.path.exists(os.path.join(workdir, 'checkpoints', 'last.keras'))
  assert os.path.exists(os.path.join(workdir, 'model.keras'))
  assert 'train.epochs' in open(
      os.path.join(workdir, 'operative_config.gin')).read()
  events = glob.glob(os.path.join(workdir, 'tensorboard', '**', 'events.*'),
                     recursive=True)
  assert events
  return metrics


class _KeepModel(keras.callbacks.Callback):
  """Gives the test the model `train` trained (`self.model`, set by fit)."""


def _keeping_test_data(dataset_fn, kept):
  """`dataset_fn`, keeping the test set it returns in kept['test']."""

  def keeping(seed):
    train_ds, test_ds, info = dataset_fn(seed=seed)
    kept['test'] = test_ds
    return train_ds, test_ds, info

  return keeping


def _top_k_accuracy(model, test_ds, k=1):
  """The fraction of `test_ds`'s examples whose label is among the k largest
  of `model`'s logits, computed in NumPy from the model's outputs (not by
  Keras' metrics), and the number of examples."""
  hits = []
  for images, labels in test_ds:
    logits = np.asarray(model(images, training=False), np.float64)
    labels = np.argmax(np.asarray(labels), axis=-1)
    # Ties (none in practice) as argmax: the first index first.
    top = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
    hits.extend(np.any(top == labels[:, None], axis=-1))
  return float(np.mean(hits)), len(hits)


def _check_accuracy(value, model, test_ds, k=1):
  """`value` (a reported top-k accuracy) is the model's on `test_ds`."""
  expected, count = _top_k_accuracy(model, test_ds, k)
  assert count > 0
  # A fraction of the `count` examples, equal to the recomputed one.
  assert abs(value * count - round(value * count)) < 1e-4, (value, count)
  assert value == pytest.approx(expected, abs=1e-6), (value, expected)


def test_experiment_list_is_complete():
  expected = {f'{d}/{m}.gin' for d in ('cifar10', 'cifar100', 'imagenet')
              for m in ('strided_conv', 'spectral_pooling', 'diffstride')}
  expected |= {f'builtin/{m}.gin' for m in ('strided_conv', 'spectral_pooling',
                                             'diffstride')}
  expected |= {f'{d}/{m}.gin' for d in ('builtin', 'digits', 'textures')
               for m in methods.keys()}
  expected |= {f'complexity/{d}.gin'
               for d in ('builtin', 'cifar10', 'cifar100', 'imagenet')}
  assert expected | {'quickstart.gin'} <= set(EXPERIMENTS)


def _gin_lines(gin_file):
  """The non-comment lines of gin/<gin_file>: (method include, others).
  The method include is `include 'base/<method>.gin'`, or that of a whole
  experiment config (`include 'builtin/<method>.gin'`)."""
  lines = [l.strip() for l in open(os.path.join(GIN_DIR, gin_file))]
  lines = [l for l in lines if l and not l.startswith('#')]
  method = [l for l in lines if (l.startswith("include 'base/")
                                 and not l.endswith("_recipe.gin'"))
            or l[len("include '"):-1] in EXPERIMENTS]
  assert len(method) == 1, (gin_file, method)
  return method[0], [l for l in lines if l != method[0]]


@pytest.mark.parametrize('gin_file', COMPOSED)
def test_every_other_experiment_composes_trained_parts(gin_file, tmp_path):
  """Its method's include is that of a config trained below, every other
  line (recipe, dataset) that of its dataset's trained config; its model
  builds (the CLI's --dry_run)."""
  same_method, same_data = _composed_of(gin_file)
  assert same_method in TRAINED and same_data in TRAINED
  method, others = _gin_lines(gin_file)
  if method != f"include '{same_method}'":  # Not the whole trained config.
    assert method == _gin_lines(same_method)[0]
    assert _gin_lines(same_method)[1] != others  # Another dataset indeed.
  assert others == _gin_lines(same_data)[1]
  gin_testing.parse(gin_file)
  if _is_audio(gin_file) and gin.query_parameter(
      'audio_datasets.name').startswith('folder:'):
    root = _wav_class_folders(str(tmp_path / 'wav_folder'), per_class=2)
    gin_testing.parse(gin_file, [f"audio_datasets.name = 'folder:{root}'"])
  training.train(workdir=str(tmp_path / 'unused'), dry_run=True)
  assert not os.path.exists(tmp_path / 'unused')


def test_every_experiment_is_trained_or_composed():
  assert sorted(TRAINED + COMPOSED) == EXPERIMENTS
  methods_trained = {os.path.basename(f) for f in TRAINED
                     if f.startswith('audio')}
  assert len(methods_trained) >= 3  # Every audio method trains somewhere.


# What `training.train` does differently from one config to another (its
# branches), and the configs whose whole run (`fit` with every callback,
# evaluation, checkpoints, metrics.json, TensorBoard) is checked for each:
# every value any config takes is run there
# (`test_every_experiment_takes_a_training_step` checks that, for every
# other config). The model class and the data pipeline vary too, but the
# harness treats them alike; each config's own model and pipeline take a
# real training step below.
HARNESS_RUNS = {
    # Resnet on built-in images, DiffStride, more than 5 classes (top-5).
    'quickstart.gin': dict(model='Resnet', dataset_fn='image_datasets',
                           inputs='image', complexity=False, callbacks=(),
                           top5=True, diffstride=True),
    # ResNet-18 on (mocked) ImageNet with the complexity regulariser.
    os.path.join('complexity', 'imagenet.gin'): dict(
        model='Resnet', dataset_fn='image_datasets', inputs='image',
        complexity=True, callbacks=(), top5=True, diffstride=True),
    # The audio classifier on waveforms, with its stride logger.
    'quickstart_audio.gin': dict(
        model='AudioClassifier', dataset_fn='audio_datasets',
        inputs='waveform', complexity=False,
        callbacks=('TimeFrequencyStrideLogger',), top5=True,
        diffstride=True),
    # A folder of WAV files, two classes (no top-5), no DiffStride layer
    # (no learned strides).
    os.path.join('audio', 'birdsong', 'strided_conv.gin'): dict(
        model='AudioClassifier', dataset_fn='audio_datasets',
        inputs='waveform', complexity=False,
        callbacks=('TimeFrequencyStrideLogger',), top5=False,
        diffstride=False),
}


def _parse_smoke(gin_file, tmp_path):
  """Parses `gin_file` with the smoke-test bindings (a WAV folder written
  for configs that read one); returns its dataset_fn."""
  # Eagerly: tracing a ResNet-18's train step costs more than the steps;
  # graph mode is trained by the quick-start and built-in tests below.
  bindings = list(SMOKE_BINDINGS) + ['train.run_eagerly = True']
  if 'imagenet' in gin_file:
    bindings.append('image_datasets.image_size = 64')  # Keep CPU time low.
  if _is_audio(gin_file):
    bindings += AUDIO_SMOKE_BINDINGS
  gin_testing.parse(gin_file, bindings)
  if _is_audio(gin_file) and gin.query_parameter(
      'audio_datasets.name').startswith('folder:'):
    root = _wav_class_folders(str(tmp_path / 'wav_folder'))
    bindings.append(f"audio_datasets.name = 'folder:{root}'")
    gin_testing.parse(gin_file, bindings)
  try:
    return gin.query_parameter('train.dataset_fn').scoped_configurable_fn
  except ValueError:  # Not bound: train's default.
    return data.image_datasets


def _record_harness(monkeypatch):
  """Records what `training.train` builds and is configured with: the
  model, the data, the arguments of `_build_and_compile` and the extra
  callbacks."""
  recorded = {}
  build_and_compile = training._build_and_compile  # pylint: disable=protected-access
  make_callbacks = training._callbacks  # pylint: disable=protected-access

  def recording_build(model_fn, datasets, *args, **kwargs):
    recorded.update(kwargs, datasets=datasets)
    recorded['model'], skipped = build_and_compile(model_fn, datasets, *args,
                                                   **kwargs)
    return recorded['model'], skipped

  def recording_callbacks(*args, **kwargs):
    recorded['extra_callbacks'] = list(kwargs['extra_callbacks'])
    return make_callbacks(*args, **kwargs)

  monkeypatch.setattr(training, '_build_and_compile', recording_build)
  monkeypatch.setattr(training, '_callbacks', recording_callbacks)
  return recorded


def _harness_path(recorded, info, dataset_fn):
  """The config's value of each thing `HARNESS_RUNS` lists."""
  model = recorded['model']
  return dict(model=type(model).__name__, dataset_fn=dataset_fn.__name__,
              inputs='image' if len(info.image_shape) == 3 else 'waveform',
              complexity=recorded['complexity_weight'] > 0,
              callbacks=tuple(type(c).__name__
                              for c in recorded['extra_callbacks']),
              top5=info.num_classes > 5,
              diffstride=bool(methods.learned_strides(model)))


def _is_diffstride_config(gin_file):
  return ('diffstride' in gin_file or 'quickstart' in gin_file
          or gin_file.startswith('complexity'))


class _FitReached(Exception):
  """Stops `training.train` where it would start `fit`."""


@pytest.mark.slow
@pytest.mark.parametrize('gin_file',
                         [f for f in TRAINED if f not in HARNESS_RUNS])
def test_every_experiment_takes_a_training_step(gin_file, tmp_path,
                                                monkeypatch):
  """Each config's own parts, through the harness up to `fit`: its gin
  parses, its pipeline gives batches of the shape its dataset info says,
  its model builds for that shape and compiles as the harness compiles it
  (regulariser and non-finite check included), and one eager training step
  on the first batch `fit` would read updates the weights with a finite
  loss. What the harness does from there (`fit`, callbacks, evaluation,
  outputs) depends only on the `HARNESS_RUNS` values, each of which a
  config there runs in full (`test_harness_paths_train_two_steps`)."""
  dataset_fn = _parse_smoke(gin_file, tmp_path)
  recorded = _record_harness(monkeypatch)

  def fit_reached(*args, **kwargs):
    del args, kwargs
    raise _FitReached()

  monkeypatch.setattr(training.checkpointing, 'fit_with_resume', fit_reached)
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(_FitReached):
      training.train(workdir=str(tmp_path / 'workdir'))
    datasets = recorded['datasets']
    train_ds = (datasets.train_epoch(0) if datasets.train_epoch is not None
                else datasets.train)
    x, y = next(iter(train_ds))
  info, model = datasets.info, recorded['model']
  assert tuple(x.shape) == (4,) + tuple(info.image_shape)
  assert tuple(y.shape) == (4, info.num_classes)
  np.testing.assert_allclose(np.sum(y.numpy(), axis=-1), 1.0, rtol=1e-6)
  assert model.run_eagerly
  before = [v.numpy().copy() for v in model.trainable_variables]
  logs = model.train_on_batch(x, y, return_dict=True)
  assert np.isfinite(logs['loss']), logs
  assert int(model.optimizer.iterations.numpy()) == 1
  after = [v.numpy() for v in model.trainable_variables]
  assert all(np.all(np.isfinite(a)) for a in after)
  changed = sum(not np.array_equal(a, b) for a, b in zip(after, before))
  assert changed > len(before) // 2, (changed, len(before))
  path = _harness_path(recorded, info, dataset_fn)
  assert path['diffstride'] == _is_diffstride_config(gin_file), path
  for key, value in path.items():
    assert value in [run[key] for run in HARNESS_RUNS.values()], (
        f'{gin_file} takes the harness path {key}={value!r}, which no '
        'config of HARNESS_RUNS runs in full: add one there.')


@pytest.mark.slow
@pytest.mark.parametrize('gin_file', sorted(HARNESS_RUNS))
def test_harness_paths_train_two_steps(gin_file, tmp_path, monkeypatch):
  """The whole run of a config for each harness path (`HARNESS_RUNS`), as
  configured (its own extra callbacks): two steps, the evaluation (its
  top-1 recomputed), the workdir's files and metrics.json."""
  assert gin_file in TRAINED
  dataset_fn = _parse_smoke(gin_file, tmp_path)
  recorded = _record_harness(monkeypatch)
  workdir = str(tmp_path / 'workdir')
  kept = {}
  with tfds.testing.mock_data(num_examples=16):
    metrics = training.train(
        workdir=workdir, dataset_fn=_keeping_test_data(dataset_fn, kept))
    # The test top-1 of the trained model on the evaluated batch
    # (train.max_eval_steps = 1), recomputed.
    _check_accuracy(metrics['test_top1'], recorded['model'],
                    kept['test'].take(1))
  info = recorded['datasets'].info
  metrics_file = _check_workdir(workdir)
  assert metrics_file['steps'] == 2 == metrics['steps']
  assert metrics_file['test_top1'] == metrics['test_top1']
  assert ('test_top5' in metrics) == HARNESS_RUNS[gin_file]['top5']
  assert _harness_path(recorded, info, dataset_fn) == HARNESS_RUNS[gin_file]
  if _is_diffstride_config(gin_file):
    assert metrics_file['learned_strides'], 'no DiffStride layer was logged'
  else:
    assert metrics_file['learned_strides'] == {}


def _quick_bindings(epochs):
  return [f'EPOCHS = {epochs}', 'train.max_steps_per_epoch = 3',
          'train.max_eval_steps = 1', 'train.verbose = 0',
          'train.shift_consistency_max_shift = 0',
          'image_datasets.max_train_examples = 192',
          'image_datasets.max_test_examples = 64']


# Steps run eagerly where what is tested is the harness's bookkeeping around
# them (backups, resume, the configuration check, errors): tracing the quick
# start's train and test steps costs about half of such a short run's CPU
# time, once per `training.train` call. Graph steps run through the same
# code in the other tests here (test_skip_policy_trains_past_a_nan_batch
# stops at a NaN step) and in tests/preemption_test.py (resume after
# SIGKILL, bit-identical).
_EAGER = 'train.run_eagerly = True'


class _Interrupt(keras.callbacks.Callback):
  """Stands in for a crash after the first epoch's backup."""

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1:
      raise KeyboardInterrupt('simulated interruption')


@pytest.mark.slow
def test_rerun_resumes_from_backup(tmp_path):
  workdir = str(tmp_path)
  gin_testing.parse('quickstart.gin', _quick_bindings(3) + [_EAGER])
  with pytest.raises(KeyboardInterrupt):
    training.train(workdir=workdir, extra_callbacks=[_Interrupt()])
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))
  # Another configuration in the same workdir: refused, nothing written.
  before = workdir_testing.files_of(workdir)
  gin_testing.parse('quickstart.gin', _quick_bindings(3) + [
      _EAGER, 'learning_rate.base = 0.02', "train.verbose = 'auto'"])
  with pytest.raises(rerun_guard.ConfigChangedError) as refused:
    training.train(workdir=workdir)
  message = str(refused.value)
  assert 'learning_rate.base: 0.003 -> 0.02' in message, message
  assert 'verbose' not in message  # Neutral: changes nothing computed.
  assert '--workdir' in message and '--allow_config_change' in message
  assert workdir_testing.files_of(workdir) == before
  gin_testing.parse('quickstart.gin', _quick_bindings(3) + [_EAGER])
  metrics = training.train(workdir=workdir)
  assert metrics['epochs_run_this_time'] == 2  # Epoch 1 came from the backup.
  assert metrics['steps'] == 3 * 3
  lines = open(os.path.join(workdir, 'strides.jsonl')).read().splitlines()
  assert [json.loads(l)['epoch'] for l in lines] == [1, 2, 3]
  # A deliberate change: one more epoch, then that config is the saved one.
  gin_testing.parse('quickstart.gin', _quick_bindings(4) + [_EAGER])
  metrics = training.train(workdir=workdir, allow_config_change=True)
  assert metrics['epochs_run_this_time'] == 1 and metrics['steps'] == 4 * 3
  assert 'EPOCHS = 4' in rerun_guard.saved_config(
      os.path.join(workdir, 'backup'))


def test_mixed_precision_with_ten_classes(tmp_path):
  """The ResNet's logits are float32 under mixed precision, so the top-5
  metric (more than 5 classes) and the loss accept them (half-precision
  logits made TopKCategoricalAccuracy fail at the first step)."""
  policy = 'mixed_float16'
  gin_testing.parse('quickstart.gin', _quick_bindings(1) + [
      'train.max_steps_per_epoch = 2', 'train.run_eagerly = True',
      f"train.mixed_precision = '{policy}'"])
  keeper, kept = _KeepModel(), {}
  try:
    metrics = training.train(
        workdir=str(tmp_path), extra_callbacks=[keeper],
        dataset_fn=_keeping_test_data(data.image_datasets, kept))
    # Top-5 and top-1 of the float32 logits, recomputed on the evaluated
    # batch (train.max_eval_steps = 1).
    _check_accuracy(metrics['test_top5'], keeper.model, kept['test'].take(1),
                    k=5)
    _check_accuracy(metrics['test_top1'], keeper.model, kept['test'].take(1))
  finally:
    keras.mixed_precision.set_dtype_policy('float32')
  assert metrics['num_classes'] == 10
  assert np.isfinite(metrics['test_loss'])
  assert metrics['test_top5'] >= metrics['test_top1']
  model = keras.models.load_model(os.path.join(str(tmp_path), 'model.keras'))
  assert model.layers[-1].compute_dtype == 'float32'
  assert model.dtype_policy.name == policy


def test_strides_move_and_are_logged(tmp_path):
  gin_testing.parse('quickstart.gin', _quick_bindings(1) + [
      "train.shift_consistency_max_shift = 'auto'"])
  metrics = training.train(workdir=str(tmp_path))
  strides = metrics['learned_strides']
  assert len(strides) == 3  # Stem and two downsampling stages.
  initial = {1.0, 2.0}
  moved = [v for pair in strides.values() for v in pair
           if min(abs(v - i) for i in initial) > 1e-4]
  assert moved, strides
  tags = set()
  for path in glob.glob(os.path.join(str(tmp_path), 'tensorboard', 'train',
                                     'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert any(t.startswith('strides/') and t.endswith('/height') for t in tags)
  assert any(t.startswith('strides/') and t.endswith('/width') for t in tags)
  assert 'learning_rate' in tags
  assert 'throughput/examples_per_second' in tags
  # metrics.json by default (no BatchNorm recalibration).
  assert set(metrics) == train_runs.METRICS_KEYS
  assert metrics['jit_compile'] is False  # 'auto' on a CPU-only machine.
  # Shift consistency ('auto': 4 px for 32 x 32) on the evaluated batch
  # (train.max_eval_steps = 1 of 64 images), in metrics.json too.
  shift = metrics['shift_consistency']
  assert (shift['max_shift'], shift['unit'], shift['num_examples'],
          shift['seed']) == (4, 'pixels', 64, 0)
  for form in ('circular', 'crop_pad'):
    assert 0 <= shift[form] <= 1 and 0 <= shift[f'top1_{form}'] <= 1
    assert shift[form] * 64 == round(shift[form] * 64)
  saved = json.load(open(os.path.join(str(tmp_path), 'metrics.json')))
  assert saved['shift_consistency'] == shift
  assert not os.path.exists(os.path.join(str(tmp_path), 'tensorboard',
                                         'recalibration'))


@pytest.mark.slow
def test_quick_start_with_xla(tmp_path):
  """train.jit_compile = True: the quick start's steps compiled by XLA, the
  DiffStride sizes static and the train function rebuilt as they change.
  (XLA and graph steps give the same losses and strides: tests/xla_test.py
  for this ResNet, tests/backend_cases.py over a dozen size changes.)"""
  # A high stride learning rate so that a size changes within three steps.
  gin_testing.parse('quickstart.gin', _quick_bindings(1) + [
      'train.jit_compile = True', 'learning_rate.base = 0.05',
      "learning_rate.schedule = 'constant'"])
  logger = _StepLogger()
  kept = {}
  metrics = training.train(
      workdir=str(tmp_path), extra_callbacks=[logger],
      dataset_fn=_keeping_test_data(data.image_datasets, kept))
  assert metrics['jit_compile'] is True
  assert metrics['size_changes_this_time'] >= 1, metrics
  # One rebuild per size change, except sizes seen before (reused).
  assert 1 <= metrics['recompilations_this_time'] <= (
      metrics['size_changes_this_time'])
  assert len(logger.losses) == 3 and np.all(np.isfinite(logger.losses))
  # The XLA-evaluated top-1, recomputed on the evaluated batch.
  _check_accuracy(metrics['test_top1'], logger.model, kept['test'].take(1))
  saved = json.load(open(os.path.join(str(tmp_path), 'metrics.json')))
  assert saved['recompilations_this_time'] == (
      metrics['recompilations_this_time'])


class _StepLogger(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.losses = []

  def on_train_batch_end(self, batch, logs=None):
    self.losses.append(float(logs['loss']))


def _run_cli(args, env=None, timeout=600):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] +
                        args, capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout, env=env)


def test_cli_dry_run_builds_without_data():
  result = _run_cli(['--gin_file=gin/cifar100/diffstride.gin', '--dry_run'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Total params' in result.stdout


def test_cli_unknown_gin_name_is_a_clear_error():
  result = _run_cli(['--gin_config=quickstart.gin',
                     '--gin_bindings=train.no_such_argument = 3'])
  assert result.returncode == 2
  assert 'no_such_argument' in result.stderr


@pytest.mark.slow
def test_cli_output_is_a_few_lines_with_one_per_epoch(tmp_path):
  """train.py's whole output, stdout and stderr (standard output is a pipe
  here, not a terminal: `train.verbose = 'auto'` gives one line per epoch
  and no progress bar): the workdir (from a `train.workdir` binding), the
  data and model lines, one line per epoch, the summary. No line from
  TensorFlow's C++ logging, no Python warning, nothing else."""
  workdir = str(tmp_path / 'bound')
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'DIFFSTRIDE_VERBOSE')}
  result = _run_cli(['--gin_file=gin/quickstart.gin',
                     f"--gin_bindings=train.workdir = '{workdir}'"] +
                    [f'--gin_bindings={b}' for b in _quick_bindings(2)] +
                    ["--gin_bindings=train.verbose = 'auto'"], env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = _check_workdir(workdir)
  # Nothing on stderr here (AMD EPYC with AVX-512). TensorFlow's native
  # warnings and errors are passed on by design, and which ones a CPU gets
  # differs: on another CPU only such lines may appear, never an INFO line,
  # a start-up notice or a Python warning.
  native_warning = re.compile(r'[WE]\d{4} [\d:. ]+\d+ \S+:\d+\] .*')
  for line in result.stderr.splitlines():
    assert native_warning.fullmatch(line), result.stderr[-3000:]
  assert 'Warning' not in result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == f'workdir: {workdir}', result.stdout
  assert lines[1] == ('data: synthetic_frequency, 10 classes, inputs '
                      '(32, 32, 3), 3 steps per epoch of 64'), result.stdout
  assert lines[2].startswith('model: Resnet with DiffStride, '), lines[2]
  assert lines[2].endswith(' parameters, 3 DiffStride layers'), lines[2]
  for epoch, line in enumerate(lines[3:5], 1):
    assert line.startswith(f'epoch {epoch}/2: train loss '), line
    assert '; test loss ' in line and '; strides diff_stride (' in line
  top1 = f'{100 * metrics["test_top1"]:.1f}%'
  assert lines[5].startswith(f'test top-1 {top1}, top-5 '), lines[5]
  assert lines[6].startswith('learned strides: diff_stride ('), lines[6]
  assert 'conv MMACs per example' in lines[7], lines[7]
  assert lines[8].startswith(f'workdir {workdir}: ') and (
      'metrics.json' in lines[8]), lines[8]
  assert len(lines) == 9, result.stdout


def test_console_drops_only_the_native_start_up_notices():
  """What TensorFlow's native libraries write while loading (seen on TF
  2.21) is dropped, cuInit's error too when no CUDA driver was found; a
  warning or an error otherwise is kept."""
  from diffstride.experiments import console  # pylint: disable=g-import-not-at-top
  noise = [
      'WARNING: All log messages before absl::InitializeLog() is called are '
      'written to STDERR',
      'I0000 00:00:1796323100.006842   12546 port.cc:153] oneDNN custom '
      'operations are on. You may see slightly different numerical results.',
      'I0000 00:00:1796323100.007341   12546 cudart_stub.cc:31] Could not '
      'find cuda drivers on your machine, GPU will not be used.',
      'To enable the following instructions: AVX2 AVX512F FMA, in other '
      'operations, rebuild TensorFlow with the appropriate compiler flags.']
  cuinit = ('E0000 00:00:1796324357.438732   24135 cuda_platform.cc:52] failed '
            'call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: '
            'UNKNOWN ERROR (303)')
  kept = ['W0000 00:00:1796323100.1 12546 gpu_device.cc:2344] Cannot dlopen '
          'some GPU libraries.',
          'E0000 00:00:1796323100.2 12546 cuda_executor.cc:1309] failed',
          'Some other message']
  keep = console.startup_lines_to_keep
  assert keep(noise[:2] + kept[:1] + noise[2:] + [cuinit] + kept[1:]) == kept
  assert keep([noise[1], cuinit]) == [cuinit]  # A driver, and it failed.


class _Stdout:

  def __init__(self, terminal):
    self._terminal = terminal

  def isatty(self):
    return self._terminal


@pytest.mark.parametrize('terminal, expected', [(True, 1), (False, 0)])
def test_verbose_auto_is_a_progress_bar_only_on_a_terminal(
    terminal, expected, monkeypatch):
  monkeypatch.setattr(sys, 'stdout', _Stdout(terminal))
  assert training._fit_verbosity('auto') == expected  # pylint: disable=protected-access
  assert training._fit_verbosity(0) == 0  # pylint: disable=protected-access


def _train_on_two_cpus(tmp_path, bindings):
  """Runs train.py on the quick start under MirroredStrategy over two logical
  CPUs (configured before TensorFlow starts: a fresh process), after checking
  that XLA is refused there. Returns the finished process."""
  script = f"""
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {ROOT!r})
from diffstride.experiments import training
try:  # Refused before anything is written (Keras cannot XLA-fit there).
  training._check_jit_compile(
      True, tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
except ValueError as e:
  print('JIT REFUSED:', e)
sys.argv = ['train.py', '--gin_file=gin/quickstart.gin',
            '--workdir={tmp_path}',
            '--gin_bindings=make_strategy.name = "mirrored"',
            '--gin_bindings=make_strategy.devices = ["/cpu:0", "/cpu:1"]'] + [
    '--gin_bindings=' + b for b in {list(bindings)!r}]
import runpy
runpy.run_path({os.path.join(ROOT, 'train.py')!r}, run_name='__main__')
"""
  return subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_backup(tmp_path):
  workdir = str(tmp_path)
  gin_testing.parse('quickstart.gin', _quick_bindings(1) + [_EAGER])
  training.train(workdir=workdir)  # A good epoch: its backup must survive.
  backup = os.path.join(workdir, 'backup', 'training_metadata.json')
  before = open(backup).read()
  gin_testing.parse('quickstart.gin', _quick_bindings(2) + [
      _EAGER, 'learning_rate.base = 1e30',
      "learning_rate.schedule = 'constant'"])
  with pytest.raises(FloatingPointError, match=r'at step \d+') as err:
    # A deliberate change of configuration in the same workdir.
    training.train(workdir=workdir, allow_config_change=True)
  assert 'learning rate' in str(err.value)
  assert open(backup).read() == before


def _poisoned_datasets(seed):
  """The quick start's data with one NaN pixel in the second training batch
  of every epoch."""
  train_ds, test_ds, info = data.image_datasets(seed=seed)

  def poison(index, batch):
    images, labels = batch
    bad = tf.tensor_scatter_nd_update(
        images, [[0, 5, 5, 0]], [float('nan')])
    return tf.cond(tf.equal(index, 1), lambda: bad, lambda: images), labels

  return train_ds.enumerate().map(poison), test_ds, info


def test_deterministic_refuses_a_train_set_without_its_fixed_passes(
    tmp_path):
  workdir = str(tmp_path / 'run')
  gin_testing.parse('quickstart.gin', _quick_bindings(1))
  # The poisoned set is another train set than the one the info's fixed
  # passes belong to: exact resume cannot be promised.
  with pytest.raises(ValueError, match='returns another train set'):
    training.train(workdir=workdir, dataset_fn=_poisoned_datasets,
                   deterministic=True)

  def without_passes(seed):
    train_ds, test_ds, info = data.image_datasets(seed=seed)
    return train_ds, test_ds, dataclasses.replace(info, train_epochs=None)

  with pytest.raises(ValueError, match='gives no fixed pass'):
    training.train(workdir=workdir, dataset_fn=without_passes,
                   deterministic=True)
  assert not os.path.exists(workdir)  # Refused before any write.


def test_skip_policy_trains_past_a_nan_batch(tmp_path):
  workdir = str(tmp_path)
  gin_testing.parse('quickstart.gin', _quick_bindings(2) +
         ["train.on_nonfinite = 'skip'"])
  metrics = training.train(workdir=workdir, dataset_fn=_poisoned_datasets)
  assert metrics['skipped_steps_this_time'] == 2  # One per epoch.
  assert metrics['steps'] == 2 * 3  # Skipped steps still count as steps.
  assert np.isfinite(metrics['test_loss'])
  model = keras.models.load_model(os.path.join(workdir, 'model.keras'))
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)

  # The default policy stops at that step, naming it.
  gin_testing.parse('quickstart.gin', _quick_bindings(1))
  with pytest.raises(FloatingPointError, match=r'at step 2 .*"skip"'):
    training.train(workdir=str(tmp_path / 'stop'),
                   dataset_fn=_poisoned_datasets)


def _tensorboard_tags(logdir):
  tags = set()
  for path in glob.glob(os.path.join(logdir, 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def _test_loss(model_path, dataset_fn=data.image_datasets, top1=None):
  """The loss of a saved model on the test batch of the parsed config;
  checks that `top1`, if given, is that model's top-1 accuracy there."""
  _, test_ds, _ = dataset_fn(seed=0)
  model = keras.models.load_model(model_path)
  if top1 is not None:
    _check_accuracy(top1, model, test_ds.take(1))
  return model.evaluate(test_ds.take(1), return_dict=True, verbose=0)['loss']


def test_batch_norm_recalibration_at_the_end(tmp_path):
  """metrics.json: before (the moving averages, as checkpoints/last.keras
  has them) and after (model.keras, recalibrated)."""
  workdir = str(tmp_path)
  gin_testing.parse('quickstart.gin', SMOKE_BINDINGS + [
      "train.recalibrate_batch_norm = 'end'",
      'train.recalibration_batches = 3'])
  metrics = training.train(workdir=workdir)
  _check_workdir(workdir)
  saved = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert saved == json.loads(json.dumps(metrics))
  assert metrics['recalibrate_batch_norm'] == 'end'
  # At most the batches of an epoch: 2 (train.max_steps_per_epoch) of 4.
  assert metrics['recalibration_batches'] == 2
  assert metrics['recalibration_examples'] == 8
  for name in ('top1', 'top5', 'loss'):
    assert f'test_{name}_before_recalibration' in metrics
  # Two steps leave the moving averages near their initial values: the
  # recalibrated statistics are far from them.
  assert metrics['test_loss'] != metrics['test_loss_before_recalibration']
  # Each top-1 recomputed from the model it was measured on.
  np.testing.assert_allclose(
      _test_loss(os.path.join(workdir, 'model.keras'),
                 top1=metrics['test_top1']), metrics['test_loss'],
      rtol=1e-5)
  np.testing.assert_allclose(
      _test_loss(os.path.join(workdir, 'checkpoints', 'last.keras'),
                 top1=metrics['test_top1_before_recalibration']),
      metrics['test_loss_before_recalibration'], rtol=1e-5)
  assert {'recalibration/test_top1_before',
          'recalibration/test_top1_after'} <= _tensorboard_tags(
              os.path.join(workdir, 'tensorboard', 'recalibration'))


def _five_class_datasets(seed):
  """The quick start's data with classes c and c + 5 merged: 5 classes, so
  no top-5 metric (it does not take half-precision logits)."""
  train_ds, test_ds, info = data.image_datasets(seed=seed)
  fold = lambda x, y: (x, y[:, :5] + y[:, 5:])
  return (train_ds.map(fold), test_ds.map(fold),
          dataclasses.replace(info, num_classes=5))


def test_batch_norm_recalibration_every_epoch_under_mixed_precision(tmp_path):
  workdir = str(tmp_path)
  gin_testing.parse('quickstart.gin', SMOKE_BINDINGS + [
      'train.epochs = 2', "train.mixed_precision = 'mixed_bfloat16'",
      "train.recalibrate_batch_norm = 'every_epoch'",
      'train.recalibration_batches = 2'])
  try:
    metrics = training.train(workdir=workdir, dataset_fn=_five_class_datasets)
    last_checkpoint_loss = _test_loss(
        os.path.join(workdir, 'checkpoints', 'last.keras'),
        _five_class_datasets)
  finally:
    keras.mixed_precision.set_dtype_policy('float32')
  assert metrics['recalibrate_batch_norm'] == 'every_epoch'
  assert metrics['recalibration_batches'] == 2
  assert np.isfinite(metrics['test_loss'])
  assert np.isfinite(metrics['test_loss_before_recalibration'])
  epochs = [json.loads(l) for l in
            open(os.path.join(workdir, 'strides.jsonl')).read().splitlines()]
  assert [e['epoch'] for e in epochs] == [1, 2]
  # The last validation ran with recalibrated statistics (which the
  # checkpoint of that epoch holds), not with the moving averages that
  # `test_loss_before_recalibration` measures.
  np.testing.assert_allclose(last_checkpoint_loss, epochs[-1]['val_loss'],
                             rtol=1e-2)
  before = metrics['test_loss_before_recalibration']
  assert abs(epochs[-1]['val_loss'] - before) > 1e-3
  model = keras.models.load_model(os.path.join(workdir, 'model.keras'))
  moving = [v for v in model.non_trainable_variables if 'moving' in v.path]
  assert moving and all(v.dtype == 'float32' for v in moving)


@pytest.mark.parametrize('binding', ["train.recalibrate_batch_norm = 'always'",
                                     'train.recalibrate_batch_norm = True',
                                     'train.recalibration_batches = 0'])
def test_bad_recalibration_binding_fails_before_training(binding, tmp_path):
  gin_testing.parse('quickstart.gin', SMOKE_BINDINGS + [binding])
  with pytest.raises(ValueError, match=r'train\.recalibrat'):
    training.train(workdir=str(tmp_path / 'run'))
  assert not os.path.exists(str(tmp_path / 'run'))


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpus_with_recalibration(tmp_path):
  """train.py under MirroredStrategy over two CPUs: XLA refused there
  before anything is written, then a run with the workdir's files, with
  recalibration (before each validation and at the end) over the two
  replicas: every replica gets the statistics, so the saved model, on one
  device, scores what the two replicas did."""
  bindings = SMOKE_BINDINGS + [
      'train.epochs = 2', "train.recalibrate_batch_norm = 'every_epoch'",
      'train.recalibration_batches = 2']
  result = _train_on_two_cpus(tmp_path, bindings)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'JIT REFUSED: train.jit_compile = True' in result.stdout
  metrics = _check_workdir(str(tmp_path))
  assert metrics['num_replicas'] == 2
  assert metrics['strategy'] == 'MirroredStrategy'
  assert metrics['recalibration_batches'] == 2
  assert metrics['test_loss'] != metrics['test_loss_before_recalibration']
  gin_testing.parse('quickstart.gin', bindings)
  np.testing.assert_allclose(
      _test_loss(os.path.join(str(tmp_path), 'model.keras')),
      metrics['test_loss'], rtol=1e-4)


def test_keras_internals_are_where_the_harness_expects_them():
  """After a Keras upgrade, this names what `keras_internals` must adapt."""
  assert keras_internals.missing_internals() == []
