"""Batches as `keras.utils.PyDataset`s: the NumPy input path.

The input path of the data the project makes or reads itself (the built-in
image sets, 'synthetic_audio', WAV folders) on the backends other than
TensorFlow (`image_datasets`' and `audio_datasets`' `input_pipeline`): NumPy
from the examples to `fit`, so a JAX run needs no TensorFlow. The same steps
as the `tf.data` pipeline, in the same order (per-example reading and
cropping, normalisation, one-hot labels, shuffle, batch,
`batch_augmentation`'s pad / crop / flip, mixup), with its own random
numbers: every random number is drawn by a generator keyed by (seed, pass,
use, batch index), and a pass permutes each window of `shuffle_buffer`
examples (as the tf.data fixed passes do).

  * `BatchPlan`: the examples (an array, or an `ExampleReader` that makes
    each batch's inputs from example indices: audio clips cropped or cut
    into windows) and how to batch them; `plan.batch(key)` is one batch, a
    pure function of the plan and its key.
  * `ArrayBatches`: a sequence of batch keys as a `PyDataset` (also a plain
    iterable of `(inputs, labels)`), with `take`, `skip` and `concatenate`
    as `tf.data.Dataset` has them, which is all the training loop asks of a
    data set. `fixed_pass(plan, epoch)` is epoch e's pass, a pure function
    of (seed, e) (what exact resume needs); `redrawn_passes(plan)` draws a
    new pass at every epoch of `fit` (the `train` a pipeline returns).
    `process_share(i, n)` gives process i of n its rows of every batch
    (data parallel over several processes: each feeds its share of the
    global batch).
"""

import abc
import dataclasses
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from diffstride.experiments.data import batch_augmentation

# Kinds of pass (the first word of a batch key).
FIXED, REDRAWN, ORDERED = range(3)
# Uses of a pass's random numbers.
SHUFFLE, BATCH_AUGMENT, MIXUP, PER_EXAMPLE = range(4)

# (kind, pass, batch index); pass None: the sequence's current redraw.
BatchKey = Tuple[int, Optional[int], int]


class ExampleReader(abc.ABC):
  """Examples made one batch at a time (e.g. audio clips read, cropped and
  zero-padded to one length)."""

  @abc.abstractmethod
  def __len__(self) -> int:
    """The number of examples N."""

  @abc.abstractmethod
  def read(self, indices: np.ndarray, rng: np.random.Generator
           ) -> np.ndarray:
    """The inputs of examples `indices` [B], float32 [B, ...]; `rng` draws
    any random numbers (a pure function of the batch's key)."""


@dataclasses.dataclass(frozen=True, eq=False)
class BatchPlan:
  """In-memory examples and how to batch them.

  Attributes:
    inputs: float32 [N, ...] as the model reads them (images [N, H, W, C],
      normalised), or an `ExampleReader` of N examples.
    labels: int [N], in [0, num_classes).
    num_classes: K (batches carry one-hot float32 labels [B, K]).
    batch_size: B.
    seed: keys every random number.
    shuffle_window: a new order at every pass (train): consecutive windows
      of this many examples are each permuted (as the tf.data pipeline's
      fixed passes do; a window of at least N permutes all); 0 or 1: the
      arrays' order.
    drop_remainder: drop the last partial batch when there is a full one.
    normalization: (mean, std), per channel (the last axis): each batch's
      inputs become (x - mean) / std, before `augment`; None: as they are.
    augment: `augment(images [B, H, W, C], rng)` on each batch, or None.
    mixup_alpha: mixup with Beta(alpha, alpha) on each batch; 0: off.
  """
  inputs: Union[np.ndarray, ExampleReader]
  labels: np.ndarray
  num_classes: int
  batch_size: int
  seed: int
  shuffle_window: int = 0
  drop_remainder: bool = False
  normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None
  augment: Optional[Callable[[np.ndarray, np.random.Generator],
                             np.ndarray]] = None
  mixup_alpha: float = 0.0
  _orders: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_batches(self) -> int:
    """Batches per pass (the remainder dropped as `drop_remainder` says)."""
    count = len(self.labels)
    if self.drop_remainder and count >= self.batch_size:
      return count // self.batch_size
    return -(-count // self.batch_size)

  def _order(self, kind: int, pass_: int) -> np.ndarray:
    """The example order of pass (kind, pass_), kept for the pass's other
    batches (the last few passes)."""
    if (kind, pass_) not in self._orders:
      order = np.arange(len(self.labels))
      if self.shuffle_window > 1:
        rng = self._rng(kind, pass_, SHUFFLE)
        order = np.concatenate(
            [rng.permutation(order[start:start + self.shuffle_window])
             for start in range(0, len(order), self.shuffle_window)]
            or [order])
      if len(self._orders) >= 4:
        self._orders.clear()
      self._orders[(kind, pass_)] = order
    return self._orders[(kind, pass_)]

  def _rng(self, kind: int, pass_: int, use: int, index: int = 0):
    return batch_augmentation.generator(
        [self.seed, kind, pass_, use, index])

  def batch(self, key: BatchKey) -> Tuple[np.ndarray, np.ndarray]:
    """Batch `key` = (kind, pass, index): (inputs [B, ...] float32,
    one-hot labels [B, K] float32)."""
    kind, pass_, index = key
    order = self._order(kind, pass_)
    chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
    if isinstance(self.inputs, ExampleReader):
      inputs = self.inputs.read(chosen,
                                self._rng(kind, pass_, PER_EXAMPLE, index))
    else:
      inputs = self.inputs[chosen]
    if self.normalization is not None:
      mean, std = (np.asarray(v, np.float32) for v in self.normalization)
      inputs = (inputs - mean) / std
    labels = np.eye(self.num_classes, dtype=np.float32)[self.labels[chosen]]
    if self.augment is not None:
      inputs = self.augment(inputs, self._rng(kind, pass_, BATCH_AUGMENT,
                                              index))
    if self.mixup_alpha > 0:
      inputs, labels = batch_augmentation.mixup(
          inputs, labels, self.mixup_alpha,
          self._rng(kind, pass_, MIXUP, index))
    return inputs.astype(np.float32, copy=False), labels


class ArrayBatches(keras.utils.PyDataset):
  """The batches of `plan` named by `keys`, in order.

  Args:
    plan: the `BatchPlan`.
    keys: the batch keys (see `BatchPlan.batch`).
  """

  def __init__(self, plan: BatchPlan, keys: Sequence[BatchKey],
               share: Tuple[int, int] = (0, 1)):
    super().__init__()
    self.plan = plan
    self._keys = tuple(keys)
    self._share = share
    self._redraw = 0

  @property
  def batch_size(self) -> int:
    """The global batch size (of every process's shares together)."""
    return self.plan.batch_size

  @property
  def num_batches(self) -> int:
    return len(self._keys)

  def __len__(self) -> int:
    return len(self._keys)

  def _batch(self, index: int, redraw: int):
    kind, pass_, batch_index = self._keys[index]
    inputs, labels = self.plan.batch(
        (kind, redraw if pass_ is None else pass_, batch_index))
    share, shares = self._share
    if shares > 1:
      rows = len(inputs) // shares
      inputs = inputs[share * rows:(share + 1) * rows]
      labels = labels[share * rows:(share + 1) * rows]
    return inputs, labels

  def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
    return self._batch(index, self._redraw)

  def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """One pass; the redrawn batches are drawn anew at every iteration
    (as a reshuffling `tf.data.Dataset`'s)."""
    redraw, self._redraw = self._redraw, self._redraw + 1
    for index in range(len(self)):
      yield self._batch(index, redraw)

  def on_epoch_end(self) -> None:
    """Keras' call after each epoch of `fit`: the next epoch's redrawn
    batches are new."""
    self._redraw += 1

  def take(self, count: int) -> 'ArrayBatches':
    """The first `count` batches (as `tf.data.Dataset.take`)."""
    return ArrayBatches(self.plan, self._keys[:max(int(count), 0)],
                        self._share)

  def skip(self, count: int) -> 'ArrayBatches':
    """All batches but the first `count` (as `tf.data.Dataset.skip`)."""
    return ArrayBatches(self.plan, self._keys[max(int(count), 0):],
                        self._share)

  def concatenate(self, other: 'ArrayBatches') -> 'ArrayBatches':
    """These batches, then `other`'s (the same plan and share)."""
    if other.plan is not self.plan or other._share != self._share:  # pylint: disable=protected-access
      raise ValueError('Only batches of the same BatchPlan and process share '
                       'concatenate.')
    return ArrayBatches(self.plan, self._keys + other._keys, self._share)  # pylint: disable=protected-access

  def process_share(self, index: int, count: int) -> 'ArrayBatches':
    """Process `index` of `count`'s rows of every batch: the batch's
    `index`-th of `count` equal consecutive parts.

    Raises:
      ValueError: a batch of these does not split into `count` equal parts.
    """
    sizes = {self.plan.batch_size}
    if not self.plan.drop_remainder or len(self.plan.labels) < (
        self.plan.batch_size):
      sizes.add(len(self.plan.labels) % self.plan.batch_size or
                self.plan.batch_size)
    uneven = sorted(size for size in sizes if size % count)
    if uneven:
      raise ValueError(
          f'Batches of {uneven[0]} examples do not split evenly over '
          f'{count} processes: make the batch size (and the test set, '
          'whose last batch keeps the remainder) a multiple of the number '
          'of processes.')
    return ArrayBatches(self.plan, self._keys, (int(index), int(count)))


def fixed_pass(plan: BatchPlan, epoch: int) -> ArrayBatches:
  """Epoch `epoch`'s pass: a pure function of (plan, epoch)."""
  return ArrayBatches(plan, [(FIXED, int(epoch), i)
                             for i in range(plan.num_batches)])


def redrawn_passes(plan: BatchPlan) -> ArrayBatches:
  """One pass per epoch of `fit`, drawn anew at every epoch."""
  return ArrayBatches(plan, [(REDRAWN, None, i)
                             for i in range(plan.num_batches)])


def ordered_pass(plan: BatchPlan) -> ArrayBatches:
  """The arrays' order, batched (a test set)."""
  return ArrayBatches(plan, [(ORDERED, 0, i)
                             for i in range(plan.num_batches)])
