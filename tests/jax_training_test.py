"""`train.py` on the JAX backend: the quick starts, resume after SIGKILL,
without TensorFlow, and data parallelism over two processes of two (virtual
CPU) devices each.

Each run is a real `KERAS_BACKEND=jax python train.py ...` process (the
backend is chosen before Keras is imported), on the built-in data, cut short.
"""

import concurrent.futures
import glob
import os
import socket
import subprocess

import numpy as np
import pytest

from diffstride.experiments import summaries

import nonfinite_test  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order
import subprocess_testing  # pylint: disable=g-bad-import-order
import train_runs  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.skipif(
    __import__('importlib.util').util.find_spec('jax') is None,
    reason='jax is not installed')

STEPS_PER_EPOCH = 4
EPOCHS = 2
# Batches of 16 (the quick start's are 64): a quarter less CPU time per run
# (measured: the steps of these short runs cost as much as their compiles).
# 16 splits over the 2 x 2 devices below.
BATCH_SIZE = 16
_BINDINGS = [f'EPOCHS = {EPOCHS}',
             f'train.max_steps_per_epoch = {STEPS_PER_EPOCH}',
             'train.max_eval_steps = 1', 'train.verbose = 0',
             'train.backup_every_steps = 2', 'train.deterministic = True',
             'train.shift_consistency_max_shift = 0',
             f'image_datasets.batch_size = {BATCH_SIZE}',
             'image_datasets.max_train_examples = 512',
             'image_datasets.max_test_examples = 64']

_TWO_DEVICES = {'XLA_FLAGS': ' '.join(
    [subprocess_testing.backend_env('jax')['XLA_FLAGS'],
     '--xla_force_host_platform_device_count=2'])}


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    return probe.getsockname()[1]


def _strides(metrics):
  return np.array([metrics['learned_strides'][k]
                   for k in sorted(metrics['learned_strides'])])


@pytest.mark.slow
def test_quickstart_on_jax_without_tensorflow_resumes_and_two_processes_match(
    tmp_path):
  log = str(tmp_path / 'runs.log')
  reference, killed, parallel = (str(tmp_path / name) for name in
                                 ('reference', 'killed', 'parallel'))

  def run(workdir, **kwargs):
    return train_runs.run_train(workdir, 'gin/quickstart.gin', _BINDINGS, log,
                                backend='jax', **kwargs)

  def two_processes(workdir, kill_at_step=None):
    """train.py as processes 0 and 1 of one data-parallel run."""
    port = _free_port()
    envs = [dict(_TWO_DEVICES,
                 KERAS_DISTRIBUTION_JOB_ADDRESSES=f'localhost:{port}',
                 KERAS_DISTRIBUTION_NUM_PROCESSES='2',
                 KERAS_DISTRIBUTION_PROCESS_ID=str(i)) for i in (0, 1)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      return list(pool.map(lambda env: train_runs.run_train(
          workdir, 'gin/quickstart.gin',
          _BINDINGS + ["make_strategy.name = 'data_parallel'"], log,
          backend='jax', env=env, kill_at_step=kill_at_step,
          peers_may_end_it=True), envs))

  # Where TensorFlow cannot be imported (the reference run, the killed one
  # and its rerun): the built-in data reach fit as NumPy batches, the logs
  # go through tensorboard's own writer, the files through Python's.
  assert train_runs.resumed_at(run(reference, without_tensorflow=True)) is None
  want = train_runs.metrics_of(reference)
  assert (want['backend'], want['strategy'], want['num_replicas']) == (
      'jax', 'OneDevice', 1)
  assert set(want) == (train_runs.METRICS_KEYS | train_runs.COMPILED_KEYS
                       ) - {'shift_consistency'}  # (Off here.)
  assert want['steps'] == EPOCHS * STEPS_PER_EPOCH
  assert want['batch_size'] == BATCH_SIZE
  # The strides moved and crossed at least one output-size boundary.
  assert want['size_changes_this_time'] >= 1
  assert np.abs(_strides(want) - [[2, 2]] * 3).max() > 1e-3
  # Its TensorBoard strides (written by tensorboard's own writer), and its
  # report, also made without TensorFlow.
  events = glob.glob(os.path.join(reference, 'tensorboard', 'train',
                                  'events.*'))
  logged = {(step, tag) for path in events
            for step, tag, _ in summaries.read_scalars(path)}
  assert {(EPOCHS * STEPS_PER_EPOCH, f'strides/{name}/{axis}')
          for name in want['learned_strides'] for axis in ('height', 'width')
          } <= logged
  report = str(tmp_path / 'report')
  train_runs.run_module_without_tensorflow(
      'diffstride.experiments.report', [reference, '--out', report], log)
  with open(os.path.join(report, 'report.md')) as f:
    assert 'Learned strides over training' in f.read()

  # One device: killed after step 3 of 4 (the last backup is step 2's),
  # rerun: resumes at step 2 and ends bit-identical.
  run(killed, kill_at_step=3, without_tensorflow=True)
  assert train_runs.resumed_at(run(killed, without_tensorflow=True)) == 2
  got = train_runs.metrics_of(killed)
  assert train_runs.comparable(got) == train_runs.comparable(want)
  train_runs.assert_same_final_weights(killed, reference)

  # keras.distribution.DataParallel over two processes of two devices each
  # (4 examples per device; each process feeds its half of every batch),
  # both killed after step 3 and rerun: each resumes at step 2 from its own
  # backup, and the run ends with the single device's strides to float
  # rounding (the batch statistics and gradients are means over the same 16
  # examples, summed in another order).
  two_processes(parallel, kill_at_step=3)
  assert [train_runs.resumed_at(out) for out in two_processes(parallel)
          ] == [2, 2]
  spread = train_runs.metrics_of(parallel)
  assert (spread['strategy'], spread['num_replicas']) == ('DataParallel', 4)
  assert spread['steps'] == want['steps']
  assert spread['batch_size'] == want['batch_size']
  # The same final strides as the single device's run, which crossed an
  # output-size boundary (above): so did this one, before or after the kill.
  np.testing.assert_allclose(_strides(spread), _strides(want), rtol=0,
                             atol=1e-4)
  np.testing.assert_allclose(spread['test_loss'], want['test_loss'],
                             rtol=1e-3)
  # Process 1 wrote the same files into a folder of its own.
  np.testing.assert_array_equal(
      _strides(train_runs.metrics_of(os.path.join(parallel, 'process-1'))),
      _strides(spread))


@pytest.mark.slow
def test_audio_quickstart_on_jax_without_tensorflow(tmp_path):
  workdir = str(tmp_path / 'audio')
  train_runs.run_train(
      workdir, 'gin/quickstart_audio.gin',
      ['EPOCHS = 1', 'train.max_steps_per_epoch = 3',
       'train.max_eval_steps = 1', 'train.verbose = 0',
       'synthetic_audio_settings.num_train = 96',
       'synthetic_audio_settings.num_test = 32'],
      str(tmp_path / 'run.log'), backend='jax', without_tensorflow=True)
  metrics = train_runs.metrics_of(workdir)
  assert metrics['backend'] == 'jax'
  assert set(metrics) == train_runs.METRICS_KEYS | train_runs.COMPILED_KEYS
  assert metrics['dataset'] == 'synthetic_audio' and metrics['steps'] == 3
  assert metrics['shift_consistency']['unit'] == 'samples'
  # The frontend's and the backbone's strides, per epoch (the audio
  # config's own logger).
  with open(os.path.join(workdir, 'time_frequency_strides.jsonl')) as f:
    lines = f.read().splitlines()
  assert len(lines) == 2  # Before training and after its one epoch.
  for name in ('model.keras', 'checkpoints/last.keras', 'strides.jsonl'):
    assert os.path.exists(os.path.join(workdir, name)), name


_FOLDERS_SCRIPT = r'''
import json, os, sys, wave
sys.modules['tensorflow'] = None  # Any TensorFlow import now fails.
import numpy as np
import PIL.Image
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import audio
from diffstride.experiments.data import images
root = ROOT_FOLDER
rng = np.random.default_rng(0)
for k, name in enumerate(['a', 'b']):
  for i in range(3):
    os.makedirs(os.path.join(root, 'wav', name), exist_ok=True)
    with wave.open(os.path.join(root, 'wav', name, f'{i}.wav'), 'wb') as w:
      w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
      w.writeframes((rng.standard_normal(6000) * 3000).astype('<i2').tobytes())
    os.makedirs(os.path.join(root, 'img', name), exist_ok=True)
    PIL.Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
        os.path.join(root, 'img', name, f'{i}.png'))
result = {}
for kind, data in (
    ('audio', audio.audio_datasets(f'folder:{root}/wav', batch_size=2,
                                   window_seconds=0.25, test_split=0.34)),
    ('image', images.image_datasets(f'folder:{root}/img', batch_size=2,
                                    test_split=0.34))):
  train, test, info = data
  x, y = next(iter(info.train_epochs.of_epoch(0)))
  result[kind] = dict(
      numpy=isinstance(train, array_batches.ArrayBatches),
      train=list(x.shape), test=[list(t.shape) for t, _ in test])
result['tensorflow_modules'] = sorted(
    m for m, v in sys.modules.items()
    if m.split('.')[0] == 'tensorflow' and v is not None)
print('RESULT ' + json.dumps(result))
'''


def test_folders_are_read_without_tensorflow(tmp_path):
  """WAV and image folders reach the NumPy pipeline on JAX in a process
  where `import tensorflow` fails (8 kHz files resampled to 16 kHz)."""
  script = _FOLDERS_SCRIPT.replace('ROOT_FOLDER', repr(str(tmp_path)))
  result = subprocess_testing.run_backend_script(script, 'jax')
  assert result['tensorflow_modules'] == []
  assert result['audio'] == dict(numpy=True, train=[2, 4000],
                                 test=[[2, 12000]])
  assert result['image'] == dict(numpy=True, train=[2, 32, 32, 3],
                                 test=[[2, 32, 32, 3]])


_NONFINITE_SCRIPT = '''
import json
import keras
import numpy as np
import diffstride
from diffstride.experiments import train_step


class DropNonFinite(keras.layers.Layer):
  """gain * x with non-finite pixels set to 0 (a select): a NaN pixel gives
  a finite loss and a NaN gradient for the gain (0 * NaN)."""

  def build(self, input_shape):
    self.gain = self.add_weight(shape=(), initializer='ones', name='gain')

  def call(self, x):
    return keras.ops.where(keras.ops.isfinite(x), x * self.gain, 0.0)


def model_with(install):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((16, 16, 3)), DropNonFinite(),
      keras.layers.Conv2D(4, 3, padding='same'),
      keras.layers.BatchNormalization(), keras.layers.ReLU(),
      diffstride.DiffStride(strides=(2.0, 2.0), data_format='channels_last'),
      keras.layers.Conv2D(4, 3, padding='same', activation='relu'),
      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
  model.compile(keras.optimizers.Adam(0.01),
                keras.losses.CategoricalCrossentropy(from_logits=True))
  diffstride.track_sizes(model)
  return model, (train_step.install(model) if install else None)


def data(nan_pixel_batches=(), nan_label_batches=()):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 16, 16, 3)).astype('float32')
  y = keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
  for b in nan_pixel_batches:
    x[b * 8 + 1, 3, 3, 0] = np.nan
  for b in nan_label_batches:
    y[b * 8 + 1, 0] = np.nan
  return x, y


class Record(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.after = []

  def on_train_batch_end(self, batch, logs=None):
    self.after.append((
        [np.array(w) for w in self.model.weights],
        {v.path: np.array(v) for v in self.model.optimizer.variables},
        float(logs['skipped_steps'])))


def same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(a, b))


# Without faults: Keras' own step's weights.
plain = []
for install in (False, True):
  model, _ = model_with(install)
  x, y = data()
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  plain.append([np.array(w) for w in model.weights])
plain_gap = max(float(np.abs(a - b).max()) for a, b in zip(*plain))

# Batch 2: finite loss, NaN gradient; batch 4: NaN loss.
model, skipped = model_with(True)
x, y = data(nan_pixel_batches=[1], nan_label_batches=[3])
record = Record()
guard = train_step.NonFinitePolicy('/tmp', skipped, 'skip')
history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                    callbacks=[guard, record])


def kept(before, after):
  (w0, o0, _), (w1, o1, _) = record.after[before], record.after[after]
  return dict(weights=same(w0, w1),
              slots=all(np.array_equal(o0[k], o1[k]) for k in o0
                        if not k.endswith('iteration')))


print('RESULT ' + json.dumps(dict(
    plain_gap=plain_gap,
    kept=[kept(0, 1), kept(2, 3)], changed=[kept(1, 2), kept(3, 4)],
    iterations=[float(next(v for k, v in o.items() if k.endswith('iteration')))
                for _, o, _ in record.after],
    logged_skips=[s for _, _, s in record.after],
    loss_history=history.history['loss'],
    skipped_history=history.history['skipped_steps'],
    total=guard.total_skipped,
    finite=all(bool(np.isfinite(np.array(w)).all()) for w in model.weights))))
'''


def test_nonfinite_steps_are_skipped_on_jax():
  out = subprocess_testing.run_backend_script(_NONFINITE_SCRIPT, 'jax')
  # Without faults the harness's step is Keras' step.
  assert out['plain_gap'] < 1e-5
  nonfinite_test.assert_two_epochs_skipped_batches_2_and_4(out)


@pytest.mark.parametrize('backend, binding, env, message', [
    ('jax', "make_strategy.name = 'mirrored'", {},
     "make_strategy.name = 'mirrored' is a tf.distribute strategy: it needs "
     'the TensorFlow backend'),
    ('torch', 'train.epochs = 1', {}, 'train runs on the tensorflow and jax '
     'backends, not KERAS_BACKEND=torch'),
    ('jax', 'train.epochs = 1', {'KERAS_DISTRIBUTION_NUM_PROCESSES': '2'},
     'KERAS_DISTRIBUTION_NUM_PROCESSES = 2: several processes train together '
     "under make_strategy.name = 'data_parallel' only"),
    ('jax', "make_strategy.name = 'data_parallel'",
     {'KERAS_DISTRIBUTION_NUM_PROCESSES': '2'},
     'needs the environment variables KERAS_DISTRIBUTION_JOB_ADDRESSES, '
     'KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID; '
     'missing: KERAS_DISTRIBUTION_JOB_ADDRESSES, '
     'KERAS_DISTRIBUTION_PROCESS_ID'),
])
def test_what_a_backend_cannot_run_is_refused_at_start_up(
    backend, binding, env, message, tmp_path):
  if __import__('importlib.util').util.find_spec(backend) is None:
    pytest.skip(f'{backend} is not installed')
  workdir = str(tmp_path / 'run')
  command = train_runs.train_command(workdir, 'gin/quickstart.gin', [binding])
  result = subprocess.run(command, cwd=train_runs.ROOT, capture_output=True,
                          text=True, timeout=300, check=False,
                          env=dict(subprocess_testing.backend_env(backend),
                                   **env))
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-3000:]
  assert not os.path.exists(workdir)  # Nothing read or written.


def test_tensorflow_datasets_are_refused_at_start_up_without_tensorflow(
    tmp_path):
  """A TFDS set on JAX where TensorFlow is not installed: the one-line
  reason, exit status 2, before anything is read or written."""
  workdir = str(tmp_path / 'run')
  output = train_runs.run_train(
      workdir, 'gin/cifar10/diffstride.gin', [], str(tmp_path / 'log'),
      backend='jax', without_tensorflow=True, expect_returncode=2)
  assert ("The dataset 'cifar10' (read by tf.data) needs TensorFlow, which "
          'is not installed') in output, output[-3000:]
  assert not os.path.exists(workdir)  # Nothing read or written.
