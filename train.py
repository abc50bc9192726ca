"""Experiment entry point: `python train.py --gin_file=...`.

The training harness (data pipelines, gin experiment configs, checkpoints,
TensorBoard logs) is not part of this release yet. Rather than pretend to
train, this script says so and exits with status 2. Today the package gives
you the layers (`diffstride.DiffStride`, ...) and the ResNets
(`diffstride.resnet.resnet18`, ...) to use in your own Keras training code;
see README.md, "Using the layer in your own model".
"""

import sys

MESSAGE = """\
train.py: the experiment harness has not landed yet, so nothing was trained.
What works today:
  * the layers and ResNets, for your own Keras code (README: "Using the layer
    in your own model");
  * python benchmarks/layer_benchmark.py         (DiffStride vs FFT pipeline)
  * python benchmarks/resnet_step_benchmark.py   (ResNet-18 training steps)
"""


def main() -> int:
  sys.stderr.write(MESSAGE)
  return 2


if __name__ == '__main__':
  sys.exit(main())
