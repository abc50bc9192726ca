"""Choosing the `tf.distribute` strategy from gin.

    make_strategy.name = 'mirrored'

'default' (one device), 'mirrored' (all local GPUs, or the given devices),
'multi_worker' (MultiWorkerMirroredStrategy configured by the TF_CONFIG
environment variable), 'tpu' (TPUStrategy on `tpu_address`).
"""

import json
import os
from typing import Optional, Sequence

from absl import logging
import gin
import keras
import tensorflow as tf

from diffstride.experiments import keras_internals

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')


@gin.configurable
def make_strategy(name: str = 'default',
                  devices: Optional[Sequence[str]] = None,
                  tpu_address: Optional[str] = None) -> tf.distribute.Strategy:
  """Builds the strategy and logs what runs where."""
  if name == 'default':
    strategy = tf.distribute.get_strategy()
  elif name == 'mirrored':
    strategy = tf.distribute.MirroredStrategy(devices=devices)
  elif name == 'multi_worker':
    if 'TF_CONFIG' not in os.environ:
      raise ValueError(
          "make_strategy.name = 'multi_worker' needs the TF_CONFIG environment "
          'variable (cluster and task of this worker); see the README.')
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras_internals.patch_multi_worker_reduction()
  elif name == 'tpu':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_address or '')
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
  else:
    raise ValueError(f'Unknown strategy {name!r}: use one of {STRATEGIES}.')
  logging.info('Strategy %s with %d replica(s); devices: %s',
               type(strategy).__name__, strategy.num_replicas_in_sync,
               ', '.join(d.name for d in tf.config.list_logical_devices()))
  if name == 'multi_worker':
    task = json.loads(os.environ['TF_CONFIG']).get('task', {})
    logging.info('Multi-worker task: %s', task)
  return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints, logs and metrics."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return (resolver.task_type == 'chief' or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_backup_dir(backup_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Where this worker keeps its BackupAndRestore state.

  The chief uses `backup_dir`; other workers a sub-folder of their own, so
  that workers sharing a file system do not write the same files. Training
  is synchronous, so every worker's backup holds the same weights.
  """
  if is_chief(strategy):
    return backup_dir
  resolver = strategy.cluster_resolver
  return os.path.join(backup_dir,
                      f'{resolver.task_type}-{resolver.task_id}')


def prepare_for_fit(model: keras.Model, strategy: tf.distribute.Strategy,
                    element_spec) -> None:
  """Lets `model.fit` run under `strategy`; call after `model.compile`.

  Keras 3 cannot `fit` under MultiWorkerMirroredStrategy
  (keras-team/keras#20585): before training it averages a data batch across
  workers eagerly to learn the input shapes, and every step it reduces the
  scalar logs in a way that fails on scalars. Under that strategy, this
  works around both (see `keras_internals`, item 3): the model's losses and
  metrics are built from the dataset's `element_spec`, and the logs are
  reduced as scalars. Nothing to do for other strategies.
  """
  if not is_multi_worker(strategy):
    return
  keras_internals.patch_multi_worker_reduction()
  keras_internals.build_from_element_spec(model, strategy, element_spec)
