"""
Title: Learnable strides on handwritten digits, and BatchNorm recalibration
Author: diffstride contributors
Date created: 2026/11/29
Last modified: 2026/11/29
Description: Train a small CNN whose pooling strides are learned (DiffStride),
  watch the strides move, compare with fixed spectral and average pooling, and
  fix its erratic inference-mode accuracy by recomputing the BatchNorm
  statistics.
Accelerator: None (a laptop CPU is enough: a few minutes on 2 cores)

Run it with `python examples/digits.py` (defaults: 12 epochs, seeds 0, 1, 2,
outputs in `docs/tutorial/`), or a reduced run with e.g.
`python examples/digits.py --epochs 2 --seeds 0 --out /tmp/digits`.
"""

"""
## Introduction

A strided convolution or pooling layer downsamples by a fixed integer factor
chosen by hand. DiffStride (Riad et al., ICLR 2022) downsamples in the
frequency domain: it keeps a box of low frequencies of the feature map's
Fourier transform, with a soft edge whose position is set by a *stride* that
is a trainable weight. The stride moves by gradient descent like any weight,
and the layer's output size follows it: about H / S + 2R per side, where R is
the `smoothness_factor` (4 by default) -- so DiffStride keeps larger maps than
a pooling layer at the same stride.

This tutorial trains a small network on scikit-learn's handwritten digits
(no download needed) with:

1. DiffStride pooling, starting at strides 2 then 3;
2. the same network with `FixedSpectralPooling` at strides 2 and 3;
3. the same network with average pooling at strides 2 and 3.

It records the strides during training, and shows a pitfall that the
DiffStride network hits much harder than the others: its test accuracy in
inference mode, computed with BatchNormalization's *moving* statistics,
jumps around from one epoch to the next while its training accuracy is
~97%. Recomputing the BatchNorm statistics after training
(`recalibrate_batch_norm`) fixes it.
"""

"""
## Setup
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras
import matplotlib

matplotlib.use('Agg')  # Write image files; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

import diffstride
from diffstride.experiments.data import packaged
from diffstride.recalibration import BatchNormRecalibration
from diffstride.recalibration import recalibrate_batch_norm

BATCH_SIZE = 64
LEARNING_RATE = 3e-3
POOLINGS = ('diffstride', 'fixed_spectral', 'average')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
  parser.add_argument('--epochs', type=int, default=12,
                      help='Epochs per training run (default 12).')
  parser.add_argument('--seeds', default='0,1,2',
                      help='Comma-separated seeds, one run per pooling and '
                      'seed (default 0,1,2).')
  parser.add_argument('--out', default='docs/tutorial',
                      help='Output directory for the plots and summary.json '
                      '(default docs/tutorial).')
  parser.add_argument('--save-model', default=None,
                      help='Where to save the DiffStride model (.keras); '
                      'default: a temporary directory, deleted at the end.')
  parser.add_argument('--poolings', default=','.join(POOLINGS),
                      help='Comma-separated subset of '
                      f'{",".join(POOLINGS)} (default: all); diffstride is '
                      'always included.')
  args = parser.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  if args.epochs < 1 or not args.seeds:
    parser.error('--epochs must be >= 1 and --seeds non-empty.')
  poolings = {p.strip() for p in args.poolings.split(',') if p.strip()}
  if not poolings <= set(POOLINGS):
    parser.error(f'--poolings must be among {POOLINGS}, got {args.poolings}.')
  args.poolings = [p for p in POOLINGS if p in poolings | {'diffstride'}]
  return args


"""
## The data

`load_digits` has 1,797 grey-level images of 8 x 8 pixels (values 0..16).
We upsample them to 32 x 32 by repeating each pixel 4 x 4 times
(`digits_images(32, 'nearest')` of the harness's `packaged` module, which
also gives the bilinear version the harness's 'digits' data set uses), so
that there is room for two downsampling layers, scale them to [0, 1], and
split them once, with a fixed permutation, into 1,400 training and 397 test
images.
"""


def load_data():
  # [1797, 32, 32, 1] in [0, 1], each pixel repeated 4 x 4; [1797] 0..9.
  x, y = packaged.digits_images(32, interpolation='nearest')
  y = y.astype('int32')
  order = np.random.default_rng(0).permutation(len(x))
  x, y = x[order], y[order]
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


"""
## The model

Conv 3x3 (16) - BN - ReLU - pool(2) - Conv 3x3 (32) - BN - ReLU - pool(3) -
Conv 3x3 (64) - BN - ReLU - global average pooling - Dense(10), with
`BatchNormalization(momentum=0.9)`. Only the pooling layers differ between
the three variants:

* `diffstride.DiffStride(strides=(s, s))`: learnable strides, initialised at
  s (one stride per axis, trained);
* `diffstride.FixedSpectralPooling(strides=(s, s))`: a hard crop of the
  spectrum at fixed strides (32 -> 16 -> 5 here);
* `keras.layers.AveragePooling2D(s, s, padding='same')` (32 -> 16 -> 6).

All layers take channels_last inputs [batch, height, width, channels].
"""


def make_pooling(kind, stride):
  if kind == 'diffstride':
    return diffstride.DiffStride(strides=(float(stride), float(stride)),
                                 data_format='channels_last')
  if kind == 'fixed_spectral':
    return diffstride.FixedSpectralPooling(
        strides=(float(stride), float(stride)), data_format='channels_last')
  if kind == 'average':
    return keras.layers.AveragePooling2D(pool_size=stride, strides=stride,
                                         padding='same')
  raise ValueError(f'Unknown pooling {kind!r}.')


def make_model(pooling, momentum=0.9, learning_rate=LEARNING_RATE):
  inputs = keras.Input((32, 32, 1))
  y = inputs
  for i, filters in enumerate((16, 32, 64)):
    y = keras.layers.Conv2D(filters, 3, padding='same')(y)
    y = keras.layers.BatchNormalization(momentum=momentum)(y)
    y = keras.layers.ReLU()(y)
    if i < 2:
      y = make_pooling(pooling, (2, 3)[i])(y)
  y = keras.layers.GlobalAveragePooling2D()(y)
  outputs = keras.layers.Dense(10)(y)  # Logits.
  model = keras.Model(inputs, outputs, name=f'digits_{pooling}')
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=['accuracy'])
  return model


def map_sizes(model, x):
  """Spatial size of the feature map after each pooling layer, on images x.

  DiffStride's output size depends on its current strides, so it is
  measured, not read from the (unknown) static shape.
  """
  pools = [l for l in model.layers
           if isinstance(l, (diffstride.DiffStride,
                             diffstride.FixedSpectralPooling,
                             keras.layers.AveragePooling2D))]
  probe = keras.Model(model.input, [p.output for p in pools])
  return [tuple(int(d) for d in out.shape[1:3]) for out in probe(x[:1])]


"""
## Watching the strides

A DiffStride layer keeps its strides in a weight `layer.strides` of shape
[2] (height, width). A small callback reads them at the start and at the end
of every epoch.
"""


class StrideHistory(keras.callbacks.Callback):
  """Records the strides of every DiffStride layer: [epochs + 1, layers, 2]."""

  def on_train_begin(self, logs=None):
    self.layers = [l for l in self.model.layers
                   if isinstance(l, diffstride.DiffStride)]
    self.strides = [self._read()]

  def on_epoch_end(self, epoch, logs=None):
    self.strides.append(self._read())

  def _read(self):
    return [layer.strides.numpy().tolist() for layer in self.layers]


"""
## Training

Every run uses the same recipe: Adam at a *constant* learning rate of 3e-3,
batches of 64, `--epochs` epochs (12 by default). The test set is given as
`validation_data`, so Keras reports after every epoch the test accuracy *in
inference mode*, that is with BatchNorm's moving statistics. After training
we evaluate again, then recompute the BatchNorm statistics from the training
images with `recalibrate_batch_norm` and evaluate a third time.
"""


def train(pooling, seed, data, epochs, momentum=0.9, learning_rate=None,
          callbacks=()):
  (x_train, y_train), (x_test, y_test) = data
  keras.utils.set_random_seed(seed)
  model = make_model(pooling, momentum,
                     learning_rate if learning_rate is not None
                     else LEARNING_RATE)
  strides = StrideHistory()
  start = time.time()
  history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
                      validation_data=(x_test, y_test), verbose=0,
                      callbacks=[strides, *callbacks])
  fit_seconds = time.time() - start
  moving = model.evaluate(x_test, y_test, verbose=0)[1]
  return model, dict(
      pooling=pooling, seed=seed, momentum=momentum,
      fit_seconds=fit_seconds,
      train_accuracy=history.history['accuracy'][-1],
      test_accuracy_per_epoch=history.history['val_accuracy'],
      test_accuracy_moving=moving,
      strides=strides.strides)


def recalibrated_accuracy(model, data, **kwargs):
  (x_train, _), (x_test, y_test) = data
  result = recalibrate_batch_norm(model, x_train, batch_size=BATCH_SIZE,
                                  **kwargs)
  return model.evaluate(x_test, y_test, verbose=0)[1], result


def mean_std(values):
  return f'{np.mean(values):.3f} +- {np.std(values):.3f}'


def main(argv=None):
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  data = load_data()
  (x_train, y_train), (x_test, y_test) = data
  print(f'Keras {keras.__version__}; train {x_train.shape}, test '
        f'{x_test.shape}; {args.epochs} epochs, seeds {args.seeds}.')
  summary = dict(epochs=args.epochs, seeds=args.seeds,
                 poolings=args.poolings, runs=[])

  # One run per pooling and seed.
  models = {}
  for pooling in args.poolings:
    for seed in args.seeds:
      model, run = train(pooling, seed, data, args.epochs)
      run['test_accuracy_recalibrated'], result = recalibrated_accuracy(
          model, data)
      run['map_sizes'] = map_sizes(model, x_test)
      summary['runs'].append(run)
      models[pooling, seed] = model
      print(f'{pooling:>14} seed {seed}: train {run["train_accuracy"]:.3f}, '
            f'test (moving stats) {run["test_accuracy_moving"]:.3f}, '
            f'test (recalibrated) {run["test_accuracy_recalibrated"]:.3f}, '
            f'maps {run["map_sizes"]}, fit {run["fit_seconds"]:.0f} s')
  print(f'(recalibrated from {result.num_examples} training images in '
        f'{result.num_batches} batches of {BATCH_SIZE})')

  """
  ## Results over seeds

  Test accuracy, mean +- standard deviation over the seeds.
  """
  print('\nTest accuracy over seeds       moving stats      recalibrated')
  for pooling in args.poolings:
    runs = [r for r in summary['runs'] if r['pooling'] == pooling]
    print(f'{pooling:>28}  '
          f'{mean_std([r["test_accuracy_moving"] for r in runs]):>16}  '
          f'{mean_std([r["test_accuracy_recalibrated"] for r in runs]):>16}')

  """
  ## The strides moved

  The DiffStride layers started at strides 2 and 3. Their learned values,
  and the feature-map sizes they give (the output size of DiffStride is about
  H / S + 2R, so its maps are larger than those of fixed pooling):
  """
  first = args.seeds[0]
  ds_runs = [r for r in summary['runs'] if r['pooling'] == 'diffstride']
  for run in ds_runs:
    final = np.round(run['strides'][-1], 3).tolist()
    print(f'seed {run["seed"]}: strides (h, w) per layer, start '
          f'{np.round(run["strides"][0], 3).tolist()} -> end {final}; maps '
          f'{run["map_sizes"]}')
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  epochs = np.arange(args.epochs + 1)
  for run in ds_runs:
    strides = np.array(run['strides'])  # [epochs + 1, 2 layers, 2 axes]
    for layer, ax in enumerate(axes):
      for axis, style in ((0, '-'), (1, '--')):
        ax.plot(epochs, strides[:, layer, axis], style, marker='o',
                markersize=3,
                label=f'seed {run["seed"]}, {("height", "width")[axis]}')
  for layer, ax in enumerate(axes):
    ax.set_title(f'DiffStride layer {layer + 1} (initial stride '
                 f'{(2, 3)[layer]})')
    ax.set_xlabel('epoch')
    ax.set_ylabel('stride')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle('Learned strides during training (digits, 32 x 32)')
  fig.tight_layout()
  strides_png = out / 'strides.png'
  fig.savefig(strides_png, dpi=100)
  plt.close(fig)
  print(f'Stride plot: {strides_png}')

  """
  ## The BatchNorm problem

  The table above already shows it: with the moving BatchNorm statistics
  (what `model.evaluate` and `model.predict` use) the DiffStride network is
  far below its accuracy with recomputed statistics, while the two fixed
  poolings lose much less. Here is the test accuracy in inference mode after
  every epoch, for the first seed: all three networks move around in the
  first epochs, the fixed poolings end up much closer to their recalibrated
  accuracy, the DiffStride network keeps jumping although its training
  accuracy is about 97%.

  Why: in inference mode BatchNorm normalises with exponential moving
  averages of the batch statistics (momentum 0.9: mostly the last 10 or so
  steps). With a constant learning rate the weights keep moving, so those
  averages lag behind the statistics of the current weights. Issue 12 of this
  project measured that the DiffStride network, whose later layers see larger
  maps, is several times more sensitive to that lag than the same network
  with fixed pooling.
  """
  print(f'\nTest accuracy per epoch with moving statistics (seed {first}):')
  for pooling in args.poolings:
    run = next(r for r in summary['runs']
               if r['pooling'] == pooling and r['seed'] == first)
    print(f'{pooling:>14}: '
          + ' '.join(f'{a:.2f}' for a in run['test_accuracy_per_epoch']))

  """
  ## The cure: recompute the statistics

  `recalibrate_batch_norm(model, x_train)` runs the training images through
  the network with every weight fixed, every BatchNorm layer normalising with
  the statistics of its batch (as in training), and sets each layer's moving
  mean and variance to the average over the batches of its batch means and
  batch variances ("precise BN"). That is what the "recalibrated" column
  above is. It needs few images: here with a single batch of 64.
  """
  model = models['diffstride', first]
  few, result = recalibrated_accuracy(model, data, num_batches=1)
  summary['recalibrated_from_64_images'] = few
  print(f'\nDiffStride seed {first}, recalibrated from {result.num_examples}'
        f' images only: test accuracy {few:.3f}')
  recalibrated_accuracy(model, data)  # Back to all the training images.

  """
  Inside `fit`, the callback `BatchNormRecalibration` recalibrates at the end
  of training, and with `before_validation=True` also before every
  validation, so that the validation metrics Keras reports are those of the
  recalibrated network:
  """
  callback = BatchNormRecalibration(x_train, batch_size=BATCH_SIZE,
                                    before_validation=True)
  _, run = train('diffstride', first, data, args.epochs,
                 callbacks=[callback])
  summary['callback_run'] = run
  print(f'DiffStride seed {first} with BatchNormRecalibration: test accuracy'
        ' per epoch '
        + ' '.join(f'{a:.2f}' for a in run['test_accuracy_per_epoch']))

  """
  The same weights as the first DiffStride run (recalibrating does not change
  training), but now every validation uses recomputed statistics. The test
  accuracy per epoch, with moving statistics and with recalibration:
  """
  fig, ax = plt.subplots(figsize=(6.5, 4))
  epoch_axis = np.arange(1, args.epochs + 1)
  for pooling in args.poolings:
    moving_run = next(r for r in summary['runs']
                      if r['pooling'] == pooling and r['seed'] == first)
    ax.plot(epoch_axis, moving_run['test_accuracy_per_epoch'], marker='o',
            markersize=3, label=f'{pooling} (moving statistics)')
  ax.plot(epoch_axis, run['test_accuracy_per_epoch'], 'k--', marker='s',
          markersize=3, label='diffstride (BatchNormRecalibration)')
  ax.set_xlabel('epoch')
  ax.set_ylabel('test accuracy')
  ax.set_title(f'Test accuracy in inference mode (seed {first})')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / 'test_accuracy.png', dpi=100)
  plt.close(fig)

  """
  ## The other cure: decay the learning rate

  The moving averages lag because the weights still move at the end of
  training. With a learning rate that decays to zero (here a cosine decay
  over the whole run) the last steps barely change the weights, the averages
  catch up, and the moving statistics are nearly as good as recomputed ones.
  """
  steps = args.epochs * int(np.ceil(len(x_train) / BATCH_SIZE))
  schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
  model_decay, run = train('diffstride', first, data, args.epochs,
                           learning_rate=schedule)
  run['test_accuracy_recalibrated'], _ = recalibrated_accuracy(model_decay,
                                                               data)
  summary['cosine_decay_run'] = run
  print(f'DiffStride seed {first}, cosine-decayed learning rate: test '
        f'(moving stats) {run["test_accuracy_moving"]:.3f}, test '
        f'(recalibrated) {run["test_accuracy_recalibrated"]:.3f}')

  """
  ## A warm-up effect: Keras' default momentum 0.99

  With `BatchNormalization()`'s default momentum of 0.99 the moving averages
  span about 100 steps and forget their initial values (mean 0, variance 1)
  slowly: with 22 steps per epoch, after 12 epochs (264 steps) 0.99^264, 7%
  of the initial values, is still in them, and the rest averages statistics
  of weights from several epochs back. The small network is then at chance
  in inference mode whatever the pooling. The momentum only affects the
  moving statistics, not training (which normalises with batch statistics):
  the weights are those of the momentum-0.9 runs, and recalibration gives
  the same accuracy as there. Use a lower momentum for short trainings, or
  recalibrate.
  """
  summary['momentum_0.99'] = []
  for pooling in args.poolings:
    model_99, run = train(pooling, first, data, args.epochs, momentum=0.99)
    run['test_accuracy_recalibrated'], _ = recalibrated_accuracy(model_99,
                                                                 data)
    summary['momentum_0.99'].append(run)
    print(f'momentum 0.99, {pooling:>14}: test (moving stats) '
          f'{run["test_accuracy_moving"]:.3f}, test (recalibrated) '
          f'{run["test_accuracy_recalibrated"]:.3f}')

  """
  ## Saving and reloading

  DiffStride layers, their learned strides and the recalibrated statistics
  are saved in the `.keras` file like any other weight; the reloaded model
  gives the same outputs.
  """
  model = models['diffstride', first]
  tmp = tempfile.TemporaryDirectory()
  path = pathlib.Path(args.save_model or
                      os.path.join(tmp.name, 'digits_diffstride.keras'))
  model.save(path)
  reloaded = keras.models.load_model(path)
  tmp.cleanup()
  before = model.predict(x_test, batch_size=BATCH_SIZE, verbose=0)
  after = reloaded.predict(x_test, batch_size=BATCH_SIZE, verbose=0)
  max_diff = float(np.max(np.abs(before - after)))
  reloaded_strides = [l.strides.numpy().tolist() for l in reloaded.layers
                      if isinstance(l, diffstride.DiffStride)]
  summary['reload'] = dict(path=str(path), max_abs_difference=max_diff,
                           outputs_equal=bool(np.array_equal(before, after)),
                           strides=reloaded_strides)
  print(f'\nSaved to {path}; reloaded outputs equal: '
        f'{np.array_equal(before, after)} (max |difference| {max_diff:g}); '
        f'reloaded strides {np.round(reloaded_strides, 3).tolist()}')

  summary['wall_seconds'] = time.time() - start
  with open(out / 'summary.json', 'w') as f:
    json.dump(summary, f, indent=1)
  print(f'Summary: {out / "summary.json"}; wall time '
        f'{summary["wall_seconds"]:.0f} s')
  return summary


if __name__ == '__main__':
  main(sys.argv[1:])
