"""The train-set shuffle, per-example map and batching of every pipeline."""

import tensorflow as tf


def shuffled_batches(examples: tf.data.Dataset, map_fn, batch_size: int,
                     seed: int, shuffle_buffer: int,
                     num_examples: int) -> tf.data.Dataset:
  """Shuffles, maps `map_fn(example, random)` and batches a training set.

  The shuffle (buffer `shuffle_buffer` examples, seeded with `seed`) is
  redone every epoch. `random` is an int64 scalar from a seeded
  `tf.data.Dataset.random` stream that changes every epoch, for per-example
  stateless augmentation. Batches stack `map_fn`'s outputs: an output
  [...] gives [B, ...]; the batch dimension B is static (remainder dropped)
  whenever there is at least one full batch (`num_examples >= batch_size`).
  """
  examples = examples.shuffle(max(int(shuffle_buffer), 1), seed=seed,
                              reshuffle_each_iteration=True)
  examples = tf.data.Dataset.zip(
      (examples, tf.data.Dataset.random(seed=seed,
                                        rerandomize_each_iteration=True)))
  examples = examples.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return examples.batch(batch_size, drop_remainder=num_examples >= batch_size)
