"""A run's data: what `train.dataset_fn` gave, cut to the step limits.

`load_data` calls the dataset_fn, finds the train set's fixed epoch passes
(`info.train_epochs`, see data/batching.py: what exact resume needs), cuts
the sets to `train.max_steps_per_epoch` / `train.max_eval_steps` and says
their sizes; `Datasets` is what the training loop reads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Tuple

from diffstride.experiments.optional import tf

from diffstride.experiments import console
from diffstride.experiments.data import array_batches
from diffstride.experiments.data import batching


def steps_per_epoch(train_ds: tf.data.Dataset, info, batch_size: int,
                    fixed_passes: bool, max_steps: Optional[int]) -> int:
  """Batches per epoch: the package's pipelines (`fixed_passes`) batch as
  `batching.num_batches` says; another dataset_fn's set by its cardinality
  where known."""
  if fixed_passes:
    steps = batching.num_batches(info.num_train_examples, batch_size)
  else:
    steps = int(train_ds.cardinality())
    if steps <= 0:
      steps = math.ceil(info.num_train_examples / batch_size)
  return max(min(steps, max_steps or steps), 1)


def batch_size_of(dataset, default: int) -> int:
  """The batch size of a `tf.data.Dataset`'s static spec or of
  `array_batches.ArrayBatches`; `default` where unknown."""
  if isinstance(dataset, array_batches.ArrayBatches):
    return dataset.batch_size
  size = dataset.element_spec[0].shape[0]
  return int(size) if size is not None else default


@dataclasses.dataclass(frozen=True)
class Datasets:
  """What `dataset_fn` gave, cut to `train.max_*_steps`, and its sizes.

  `train_epoch(e)`: epoch e's fixed pass of the train set (cut likewise),
  or None when the dataset_fn has none (then `fit` iterates `train`, whose
  order and augmentation are redrawn at every iteration).
  """
  train: tf.data.Dataset
  test: tf.data.Dataset
  info: Any  # `data.DatasetInfo`.
  batch_size: int
  steps_per_epoch: int
  train_epoch: Optional[Callable[[Any], tf.data.Dataset]] = None

  def recalibration_data(self) -> tf.data.Dataset:
    """The batches BatchNorm recalibration reads: epoch 0's fixed pass
    (the same in a resumed run), else the train set."""
    if self.train_epoch is not None:
      return self.train_epoch(0)
    return self.train


def load_data(dataset_fn, seed: int, max_steps_per_epoch: Optional[int],
              max_eval_steps: Optional[int],
              deterministic: bool = False,
              process_share: Tuple[int, int] = (0, 1)) -> Datasets:
  """Reads the datasets, cuts them to the step limits and logs their sizes.

  `process_share` (index, count): with several processes training together,
  NumPy batches (`array_batches.ArrayBatches`) give this process its rows of
  every batch; a `tf.data.Dataset` is left whole (Keras shards it; see
  `is_process_share`).

  Raises:
    ValueError: `deterministic` and the train set has no fixed epoch passes.
  """
  train_ds, test_ds, info = dataset_fn(seed=seed)
  passes = getattr(info, 'train_epochs', None)
  train_epoch = passes.for_dataset(train_ds) if passes is not None else None
  if deterministic and train_epoch is None:
    raise ValueError(
        'train.deterministic = True needs a train set with fixed epoch '
        'passes, and the dataset_fn ' + (
            'returns another train set than the one its info.train_epochs '
            'belongs to' if passes is not None else
            'gives no fixed pass (info.train_epochs)') +
        ': use the package\'s pipelines (image_datasets, audio_datasets), '
        'or return info.with_train_epochs(train, of_epoch) from yours '
        '(diffstride/experiments/data/batching.py).')
  batch_size = batch_size_of(train_ds, info.num_train_examples)
  steps = steps_per_epoch(train_ds, info, batch_size,
                          train_epoch is not None, max_steps_per_epoch)
  if max_steps_per_epoch:
    train_ds = train_ds.take(max_steps_per_epoch)
    if train_epoch is not None:
      of_epoch = train_epoch
      train_epoch = lambda epoch: of_epoch(epoch).take(max_steps_per_epoch)
  if max_eval_steps:
    test_ds = test_ds.take(max_eval_steps)
  index, count = process_share
  if count > 1 and isinstance(train_ds, array_batches.ArrayBatches):
    share = lambda batches: batches.process_share(index, count)
    train_ds, test_ds = share(train_ds), share(test_ds)
    if train_epoch is not None:
      whole_epoch = train_epoch
      train_epoch = lambda epoch: share(whole_epoch(epoch))
  console.say(f'data: {info.name}, {info.num_classes} classes, inputs '
              f'{tuple(info.image_shape)}, {steps} steps per epoch '
              f'of {batch_size}')
  return Datasets(train_ds, test_ds, info, batch_size, steps, train_epoch)


def is_process_share(datasets: Datasets) -> bool:
  """Whether `load_data` gave this process its share of each batch (NumPy
  batches), rather than whole batches."""
  return isinstance(datasets.train, array_batches.ArrayBatches)
