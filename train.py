r"""Runs an experiment from gin files: a thin CLI over `diffstride.experiments.training`.

    python train.py --gin_file=gin/quickstart.gin
    python train.py --gin_file=gin/cifar10/diffstride.gin \
        --gin_bindings='STRIDE_INIT = (3, 2, 3)' --workdir=runs/c10_323 --seed=1

The code is `diffstride_cli.py`; an installed package (`pip install
".[experiments]"`, editable or not) has it as the `diffstride-train` command,
same flags, from any folder: `diffstride-train --gin_file=quickstart.gin`.

Gin files are looked up as given, then under `gin/` (so `include` lines and
`--gin_file=cifar10/diffstride.gin` both work; an installed package without a
clone uses the copy of `gin/` it ships). `--gin_config` is an alias of
`--gin_file`. The workdir is, in order: `--workdir`, a `train.workdir`
binding, or `runs/<name of the last gin file>-seed<seed>`. Rerunning the same
command resumes an interrupted run from its last backup.

It prints the workdir, a data line, a model line, one line per epoch (Keras'
progress bar on a terminal) and a summary; metrics.json in the workdir is
the full record. `--verbose` also shows the harness's log, TensorFlow's
start-up notices and INFO lines (TF_CPP_MIN_LOG_LEVEL is 1 otherwise,
unless set; see diffstride/experiments/console.py).
"""

import os
import sys

# This clone's diffstride_cli.py, also when train.py is run with runpy from
# elsewhere (`python train.py` has its folder first on sys.path already).
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in (os.path.abspath(p or os.curdir) for p in sys.path):
  sys.path.insert(0, _ROOT)

import diffstride_cli  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == '__main__':
  diffstride_cli.train_main()
