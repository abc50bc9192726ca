"""Does the input pipeline keep the model fed? Training steps/s, real vs cached.

Trains the model of a gin config (default: the quick start's small ResNet with
DiffStride on the built-in data) for a number of steps three ways, in turn:

  * passes   - the config's real `tf.data` pipeline (generation or decoding,
               augmentation, mixup, batching, prefetch) as `train.py` feeds
               it: every epoch's fixed pass, one after another (stateless
               shuffle and augmentation, for exact resume);
  * reshuffled - the same pipeline as `dataset_fn` returns it, with tf.data's
               own shuffle and random streams redrawn at every iteration;
  * cached   - one batch of that pipeline, cached and repeated: the same
               tensors with no input work at all.

passes / cached steps per second close to 1.0 means the input pipeline is
not the bottleneck; well below 1.0 means the model waits for data.

On the Keras backend of `KERAS_BACKEND`: on JAX the built-in image sets are
NumPy batches (`data/array_batches.py`), timed the same three ways (the
reshuffled set redrawn at each pass, the cached one a single batch).

    [KERAS_BACKEND=jax] python benchmarks/input_pipeline_benchmark.py
        [--gin_file gin/quickstart.gin] [--steps 30] [--repeats 3]
        [--gin_bindings 'image_datasets.augment = False']
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gin  # pylint: disable=g-import-not-at-top
import keras
import numpy as np

from benchmarks import machine  # pylint: disable=g-bad-import-order

import diffstride.experiments  # pylint: disable=unused-import  # Registers configurables.
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import batching
from diffstride.experiments import training  # pylint: disable=unused-import  # train.
from diffstride.experiments import hparams


def _model(info, steps_per_epoch):
  model_fn = gin.query_parameter('train.model_fn').scoped_configurable_fn
  model = model_fn(num_output_classes=info.num_classes)
  model.build((None,) + tuple(info.image_shape))
  model.compile(
      optimizer=hparams.optimizer(hparams.learning_rate(steps_per_epoch)),
      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
  return model


def _steps_per_second(model, dataset, steps):
  model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0,
            shuffle=False)  # Warm up (shuffle: the pipeline does it).
  start = time.perf_counter()
  model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
  return steps / (time.perf_counter() - start)


class _OneBatch(keras.utils.PyDataset):
  """One batch, `length` times: no input work."""

  def __init__(self, batch, length):
    super().__init__()
    self._batch, self._length = batch, length

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    return self._batch


def _numpy_inputs(train_ds, info, steps):
  """The three inputs for NumPy batches, each long enough for a warm-up and
  `steps` steps."""
  epochs = -(-(steps + 2) // max(len(train_ds), 1)) + 1
  reshuffled = train_ds
  for _ in range(epochs - 1):
    reshuffled = reshuffled.concatenate(train_ds)
  return {
      'passes': batching.epoch_stream(info.train_epochs.of_epoch, 0, epochs),
      'reshuffled': reshuffled,
      'cached': _OneBatch(train_ds[0], steps + 2),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--gin_file', default='gin/quickstart.gin')
  parser.add_argument('--gin_bindings', nargs='*', default=[])
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  gin.add_config_file_search_path(os.path.join(ROOT, 'gin'))
  gin.parse_config_files_and_bindings([os.path.join(ROOT, args.gin_file)],
                                      args.gin_bindings)
  dataset_fn = gin.query_parameter('train.dataset_fn').scoped_configurable_fn
  train_ds, _, info = dataset_fn(seed=0)
  if isinstance(train_ds, array_batches.ArrayBatches):
    inputs = _numpy_inputs(train_ds, info, args.steps)
  else:
    inputs = {
        'passes': batching.epoch_stream(info.train_epochs.of_epoch, 0,
                                        1 << 20),
        'reshuffled': train_ds.repeat(),
        'cached': train_ds.take(1).cache().repeat(),
    }
  model = _model(info, steps_per_epoch=100)
  rates = {name: [] for name in inputs}
  for _ in range(args.repeats):  # In turn, so that other load hits all.
    for name, dataset in inputs.items():
      rates[name].append(_steps_per_second(model, dataset, args.steps))
  median = {name: float(np.median(r)) for name, r in rates.items()}
  batch = (train_ds.batch_size
           if isinstance(train_ds, array_batches.ArrayBatches)
           else train_ds.element_spec[0].shape[0])
  print(f'CPU: {machine.cpu_name()}; Keras backend {keras.backend.backend()}')
  print(f'{args.gin_file}: {info.name}, batch {batch}, {args.steps} steps x '
        f'{args.repeats} (medians)')
  print(f'  fixed epoch passes (train.py): {median["passes"]:7.2f} steps/s')
  print(f'  reshuffled pipeline:           {median["reshuffled"]:7.2f} steps/s')
  print(f'  cached tensors:                {median["cached"]:7.2f} steps/s')
  print(f'  passes / cached:     {median["passes"] / median["cached"]:7.2f}')
  print(f'  passes / reshuffled: '
        f'{median["passes"] / median["reshuffled"]:7.2f}')


if __name__ == '__main__':
  main()
