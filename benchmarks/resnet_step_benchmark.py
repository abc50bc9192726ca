"""ResNet-18 CIFAR training step: DiffStride's own cost inside a real network.

Three networks of identical architecture (pre-activation-free official
ResNet-18, CIFAR stem, strides (1, 1, 2, 2, 2), channels_last, float32, batch
32 of 32x32x3) differ only in their downsampling layers:

  * avgpool    - SpatialPooling (1x1 average pooling, stride 2): the cheapest.
  * stand-in   - a free crop (`x[:, :h', :w']`) to the very output size that
                 DiffStride produces at its initial strides (24, 20, 18 on
                 CIFAR at strides 2): the convolutions that follow see maps
                 exactly as large as with DiffStride, the layer costs nothing.
  * DiffStride - the real layer.

DiffStride / stand-in isolates the layer's own cost (target <= 1.25x); the
stand-in / avgpool ratio shows what DiffStride's larger maps cost the
convolutions, whatever the layer does. Each step is `model.train_on_batch`
(forward, backward, SGD update) and the networks are timed alternately.

`--every_method`: instead, the same ResNet-18 with every registered method
(`diffstride.methods`, each placed where `resnet.Resnet` puts it), as
ratios to strided convolutions, timed alternately in one run.

    python benchmarks/resnet_step_benchmark.py [--steps 5] [--batch 32]
        [--every_method]
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

from benchmarks import machine  # pylint: disable=g-bad-import-order
from benchmarks.stand_in import CropStandIn  # pylint: disable=g-bad-import-order
from diffstride import methods
from diffstride import pooling
from diffstride import resnet


def build(pooling_cls, batch, num_classes=10):
  model = resnet.resnet18(num_output_classes=num_classes, channels_first=False,
                          pooling_cls=pooling_cls)
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  model(np.zeros((batch, 32, 32, 3), np.float32))
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--every_method', action='store_true',
                      help='every registered method against strided '
                      'convolutions')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, size=(args.batch,))
  if args.every_method:
    nets = {m.label: m.layer_cls for m in methods.all_methods()}
  else:
    nets = {'avgpool': pooling.SpatialPooling, 'stand-in': CropStandIn,
            'DiffStride': pooling.DiffStride}
  models = {name: build(cls, args.batch) for name, cls in nets.items()}
  for model in models.values():  # Trace and warm up.
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
  times = {name: [] for name in models}
  for _ in range(args.steps):
    for name, model in models.items():
      start = time.perf_counter()
      model.train_on_batch(x, y)
      times[name].append(time.perf_counter() - start)
  med = {name: float(np.median(t)) for name, t in times.items()}
  print(f'CPU: {machine.cpu_name()}; TensorFlow {tf.__version__}, ResNet-18 CIFAR '
        f'training step, batch {args.batch}, channels_last, float32, median '
        f'of {args.steps} steps')
  if args.every_method:
    base = med[methods.get('strided_conv').label]
    for name, seconds in med.items():
      print(f'  {name:>18}: {1e3 * seconds:8.1f} ms/step  '
            f'{seconds / base:5.2f}x strided conv.')
    return
  for name, seconds in med.items():
    print(f'  {name:>10}: {1e3 * seconds:8.1f} ms/step')
  print(f'DiffStride / stand-in: {med["DiffStride"] / med["stand-in"]:.2f}x '
        '(target <= 1.25x: the layer\'s own cost)')
  print(f'stand-in / avgpool:   {med["stand-in"] / med["avgpool"]:.2f}x '
        '(what the larger maps cost the convolutions)')


if __name__ == '__main__':
  main()
