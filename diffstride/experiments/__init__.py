"""The experiment harness: training, data, gin, checkpoints, reports.

Built on the core library (`diffstride`), and TensorFlow-only (tf.data,
tensorflow-datasets, tf.distribute). Importing it registers the package's
layers, models and harness functions with gin (see `configurables`).

    python train.py --gin_file=gin/quickstart.gin        # the command line
    from diffstride.experiments import training          # the loop itself
"""

from diffstride.experiments import console as _console
from diffstride.experiments import configurables as _configurables  # pylint: disable=unused-import
from diffstride.experiments import training as _training  # pylint: disable=unused-import
from diffstride.experiments.data import audio as _audio  # pylint: disable=unused-import
from diffstride.experiments.data import images as _images  # pylint: disable=unused-import

_console.install_gin_probe_filter()
