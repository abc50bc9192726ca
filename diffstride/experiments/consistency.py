"""Shift consistency of a trained model on a test set (metrics.json's
`shift_consistency`), after Zhang, "Making Convolutional Networks
Shift-Invariant Again" (ICML 2019).

For every test example, two offsets are drawn independently, each uniform
on the integers of [-max_shift, max_shift] per shifted axis (images: rows
and columns, in pixels; waveforms: time, in samples), from
`np.random.default_rng(seed)` in the test set's (deterministic) order: the
same seed gives the same offsets. The example is shifted by each
(`diffstride.shifts`), in two forms with the same offsets:

  * circular: `np.roll` of the image (of the clip, for audio);
  * crop_pad: the content moves, what leaves is dropped and the uncovered
    border is filled with 0.0 in the normalised input space (images: the
    train set's per-channel mean; waveforms: silence). The size is kept.

Consistency (per form) is the fraction of test examples whose top-1 class
(argmax of the logits) is the same for the two shifted copies. Both offsets
may coincide (more often for small max_shift: with max_shift = 4, an image's
two offsets are equal with probability 1/81), which counts as agreement,
as in Zhang's definition. The cost is four inference passes over the test set
(two copies x two forms).

metrics.json's entry:

    "shift_consistency": {
      "circular": 0.97,        # fraction of examples, in [0, 1]
      "crop_pad": 0.95,
      "top1_circular": 0.91,   # test top-1 of the shifted copies (mean of
      "top1_crop_pad": 0.90,   # the two), in [0, 1]
      "max_shift": 4,
      "unit": "pixels",        # or "samples" (waveforms)
      "num_examples": 1000,
      "seed": 0,
      "seconds": 3.1           # what measuring it took
    }
"""

import time
from typing import Any, Dict, Optional

import numpy as np

from diffstride import shifts
from diffstride.experiments import runs as runs_lib

UNITS = {2: 'pixels', 1: 'samples'}


def resolve_max_shift(max_shift: Any, model, input_shape) -> int:
  """`train.shift_consistency_max_shift` as a number of pixels or samples:
  'auto' is `shifts.default_max_shift` (for audio at the model's frontend's
  sample rate); None, False or 0: off (0)."""
  if max_shift is None or max_shift is False:
    return 0
  if max_shift == 'auto':
    frontend = getattr(model, 'frontend', None)
    return shifts.default_max_shift(
        input_shape, getattr(frontend, 'sample_rate', None))
  if (not isinstance(max_shift, (int, np.integer)) or isinstance(max_shift, bool)
      or max_shift < 0):
    raise ValueError("train.shift_consistency_max_shift must be 'auto', None "
                     f'or a whole number >= 0, got {max_shift!r}.')
  return int(max_shift)


def shift_consistency(model, test_ds, max_shift: int, seed: int = 0,
                      max_batches: Optional[int] = None,
                      local: bool = False) -> Dict[str, Any]:
  """The consistency of `model` on `test_ds` (batches of (inputs, one-hot
  labels)), as the module docstring defines it.

  Args:
    model: a Keras model giving logits [B, K]; called through
      `predict_on_batch` (its compiled predict step, under its strategy).
    test_ds: an iterable of (inputs, labels) batches, inputs [B, H, W, C]
      images or [B, T] / [B, T, 1] waveforms.
    max_shift: the largest offset, >= 1.
    seed: of the offsets.
    max_batches: read at most that many batches.
    local: call the model itself (eagerly, on this process) instead of
      `predict_on_batch`, whose outputs under MultiWorkerMirroredStrategy
      are every worker's batch gathered (each worker measures its own copy
      of the test set).

  Returns:
    metrics.json's `shift_consistency` entry.
  """
  if int(max_shift) < 1:
    raise ValueError(f'max_shift must be >= 1, got {max_shift}.')
  start = time.time()
  rng = np.random.default_rng(seed)
  agree = {form: 0 for form in shifts.FORMS}
  correct = {form: 0 for form in shifts.FORMS}
  count = 0
  axes = None
  for index, (inputs, labels) in enumerate(test_ds):
    if max_batches is not None and index >= max_batches:
      break
    batch = int(inputs.shape[0])
    axes = shifts.shifted_axes(inputs)
    first = shifts.random_offsets(rng, batch, max_shift, axes)
    second = shifts.random_offsets(rng, batch, max_shift, axes)
    labels = np.argmax(np.asarray(labels), axis=-1)
    predict = ((lambda x: model(x, training=False)) if local
               else model.predict_on_batch)
    for form in shifts.FORMS:
      logits = [np.asarray(predict(shifts.shift_inputs(inputs, o, form)))
                for o in (first, second)]
      agree[form] += int(np.sum(shifts.top1_agreement(*logits)))
      correct[form] += sum(int(np.sum(np.argmax(l, axis=-1) == labels))
                           for l in logits)
    count += batch
  if not count:
    raise ValueError('shift_consistency: the test set is empty.')
  result = {form: agree[form] / count for form in shifts.FORMS}
  result.update({f'top1_{form}': correct[form] / (2 * count)
                 for form in shifts.FORMS})
  result.update(max_shift=int(max_shift), unit=UNITS[axes],
                num_examples=count, seed=int(seed),
                seconds=time.time() - start)
  return result


def consistency_table(runs) -> str:
  """Markdown for the report: per dataset, rows = (method, stride
  initialisation), the circular and crop-and-pad consistency (%, mean ± std
  over seeds) beside the test accuracy; '—' for runs written before
  metrics.json had `shift_consistency`. Only runs without complexity
  penalty. '' when no run has it."""
  runs = [r for r in runs if r.weight == 0]
  if not any('shift_consistency' in r.metrics for r in runs):
    return ''
  out = []
  for dataset in sorted({r.dataset for r in runs}):
    subset = [r for r in runs if r.dataset == dataset]
    shift = sorted({(e['max_shift'], e['unit']) for r in subset
                    if (e := r.metrics.get('shift_consistency'))})
    where = ', '.join(f'up to {k} {unit}' for k, unit in shift) or 'none'
    out.append(f'**{dataset}**: shift consistency (%: same top-1 class for '
               f'two random shifts, {where}), mean ± std over seeds\n')
    out.append('| method | stride init. | test accuracy | circular | '
               'crop and pad |')
    out.append('|---|---|---|---|---|')
    for method in runs_lib.methods_in(subset):
      here = [r for r in subset if r.method == method]
      for init in sorted({r.init for r in here},
                         key=runs_lib.init_key):
        group = [r for r in here if r.init == init]
        row = [runs_lib.label(method), init,
               runs_lib.cell([r.top1 for r in group])]
        for form in shifts.FORMS:
          values = [r.metrics['shift_consistency'][form] for r in group
                    if 'shift_consistency' in r.metrics]
          row.append(runs_lib.cell(values))
        out.append('| ' + ' | '.join(row) + ' |')
    out.append('')
  return '\n'.join(out)
