"""The train-set shuffle, per-example map and batching of every pipeline,
and the fixed epoch passes that make a resumed run bit-identical.

Two ways to draw a training set's randomness (order and augmentation):

  * `reshuffle=True` (the dataset a pipeline returns as `train`): tf.data's
    seeded shuffle and random streams, redrawn at every iteration. The
    epochs differ, but which epoch gets which draw depends on how often
    the dataset was iterated before: a run resumed from a backup does not
    see the batches an uninterrupted run would have seen.
  * fixed passes (`reshuffle=False`, `EpochPasses`): pass e is a pure
    function of (seed, e): stateless shuffle and stateless random numbers
    keyed by `epoch_seed(seed, e)`. The training loop feeds epoch e's pass
    to epoch e, so a resumed run skips to the step it stopped at and sees
    exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

from diffstride.experiments.data import array_batches
from diffstride.experiments.optional import tf

Seed = Union[int, 'tf.Tensor']

# Substreams of one pass's seed, one per use (see `substream`).
SHUFFLE, PER_EXAMPLE, BATCH_AUGMENT, MIXUP = range(4)


def epoch_seed(seed: Seed, epoch) -> tf.Tensor:
  """The seed of epoch `epoch`'s pass (int64 scalar): distinct for every
  (seed, epoch) with epoch < 2**24."""
  return (tf.cast(seed, tf.int64) * (1 << 24) + tf.cast(epoch, tf.int64))


def substream(pass_seed: Seed, use: int) -> tf.Tensor:
  """An int64 seed for one `use` (SHUFFLE, PER_EXAMPLE, ...) of a pass."""
  return tf.cast(pass_seed, tf.int64) * 4 + use


def random_stream(pass_seed: Seed, use: int,
                  reshuffle: bool) -> tf.data.Dataset:
  """An endless stream of int64 scalars for the stateless random ops of one
  `use` (PER_EXAMPLE, BATCH_AUGMENT, MIXUP) of a pass.

  `reshuffle`: a `tf.data.Dataset.random` seeded with `pass_seed + use`
  (`pass_seed` a Python int), redrawn at every iteration. Otherwise element
  i is a pure function of (`substream(pass_seed, use)`, i) (`pass_seed` may
  be a tensor).
  """
  if reshuffle:
    return tf.data.Dataset.random(seed=int(pass_seed) + use,
                                  rerandomize_each_iteration=True)
  key = tf.stack([substream(pass_seed, use), tf.constant(0x5EED, tf.int64)])
  return tf.data.Dataset.counter(dtype=tf.int64).map(
      lambda i: tf.random.stateless_uniform(
          [], tf.stack([key[0], key[1] + i]), minval=None, maxval=None,
          dtype=tf.int64))


def stateless_shuffle(examples: tf.data.Dataset, seed: Seed,
                      window: int) -> tf.data.Dataset:
  """Shuffles `examples` as a pure function of `seed` (may be a tensor).

  Consecutive windows of `window` examples are each permuted by stateless
  random keys (the last window may be shorter): as with a shuffle buffer
  of that size, an example moves within about `window` places. (tf.data's
  own shuffle takes no tensor seed once a global seed is set, which
  `keras.utils.set_random_seed` does.)
  """
  seed = tf.cast(seed, tf.int64)

  def permute(index, window_examples):
    size = tf.shape(tf.nest.flatten(window_examples)[0])[0]
    keys = tf.random.stateless_uniform([size], tf.stack([seed, index]))
    order = tf.argsort(keys)
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: tf.gather(t, order),
                              window_examples))

  windows = examples.ragged_batch(max(int(window), 1))
  return windows.enumerate().flat_map(permute)


def shuffled_batches(examples: tf.data.Dataset, map_fn, batch_size: int,
                     seed: Seed, shuffle_buffer: int, num_examples: int,
                     reshuffle: bool = True) -> tf.data.Dataset:
  """Shuffles, maps `map_fn(example, random)` and batches a training set.

  `random` is an int64 scalar for per-example stateless augmentation.
  `reshuffle` (with a Python int `seed`): tf.data's shuffle (buffer
  `shuffle_buffer` examples) and random stream, redrawn at every iteration.
  Otherwise one fixed pass, a pure function of `seed` (a pass seed, may be
  a tensor: see `EpochPasses`). Batches stack `map_fn`'s outputs: an output
  [...] gives [B, ...]; the batch dimension B is static (remainder dropped)
  whenever there is at least one full batch (`num_examples >= batch_size`).
  """
  if reshuffle:
    examples = examples.shuffle(max(int(shuffle_buffer), 1), seed=int(seed),
                                reshuffle_each_iteration=True)
  else:
    examples = stateless_shuffle(examples, substream(seed, SHUFFLE),
                                 shuffle_buffer)
  randoms = random_stream(seed, PER_EXAMPLE, reshuffle)
  examples = tf.data.Dataset.zip((examples, randoms))
  examples = examples.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return examples.batch(batch_size, drop_remainder=num_examples >= batch_size)


def num_batches(num_examples: int, batch_size: int) -> int:
  """Batches per pass of `shuffled_batches` (the remainder is dropped when
  there is a full batch)."""
  if num_examples >= batch_size:
    return num_examples // batch_size
  return 1 if num_examples > 0 else 0


@dataclasses.dataclass(frozen=True)
class EpochPasses:
  """A pipeline's train set and its fixed epoch passes.

  Attributes:
    train: the train set the pipeline returned (`reshuffle=True`).
    of_epoch: `of_epoch(epoch)` -> the batched pass of that epoch, a pure
      function of the pipeline's seed and `epoch` (an int64 scalar, may be
      a tensor), with the same element spec as `train`.
  """
  train: tf.data.Dataset
  of_epoch: Callable[[tf.Tensor], tf.data.Dataset]

  def for_dataset(self, dataset: tf.data.Dataset
                  ) -> Optional[Callable[[tf.Tensor], tf.data.Dataset]]:
    """`of_epoch` if `dataset` is this very train set, else None (a
    dataset_fn that transformed it has passes of its own or none)."""
    return self.of_epoch if dataset is self.train else None


def epoch_stream(of_epoch: Callable[[Any], Any], first: int, end: int):
  """The passes of epochs first, ..., end - 1, one after another.

  `of_epoch(e)` gives a `tf.data.Dataset` (called with an int64 tensor
  inside `flat_map`), or an `array_batches.ArrayBatches` (called with each
  Python int; the passes are concatenated).
  """
  if end > first:
    passes = [of_epoch(first)]
    if isinstance(passes[0], array_batches.ArrayBatches):
      passes += [of_epoch(epoch) for epoch in range(first + 1, end)]
      return functools.reduce(lambda a, b: a.concatenate(b), passes)
  return tf.data.Dataset.range(first, end).flat_map(of_epoch)
