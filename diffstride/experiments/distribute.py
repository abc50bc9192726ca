"""How a run spreads over devices, chosen in gin on the backend's own engine.

    make_strategy.name = 'mirrored'

On TensorFlow, a `tf.distribute` strategy: 'default' (one device),
'mirrored' (all local GPUs, or the given devices), 'multi_worker'
(MultiWorkerMirroredStrategy configured by the TF_CONFIG environment
variable), 'tpu' (TPUStrategy on `tpu_address`). On JAX, `keras.distribution`:
'default' (one device) or 'data_parallel' (`keras.distribution.DataParallel`
over every device JAX sees: each batch split across them, the weights
replicated). Every other pairing is refused before anything is read or
written, naming the backend.

'data_parallel' over several processes (hosts): start one `train.py` per
process with the environment variables Keras' `keras.distribution.initialize`
reads (`KERAS_DISTRIBUTION_JOB_ADDRESSES`: the coordinator's host:port;
`KERAS_DISTRIBUTION_NUM_PROCESSES`; `KERAS_DISTRIBUTION_PROCESS_ID`). The
mesh then spans every process's devices; each process feeds its share of
every global batch (`process_share`), process 0 writes the outputs.

On JAX the run's "strategy" is a `KerasDistribution`, which has the few
things of a `tf.distribute.Strategy` the harness uses (`scope`,
`num_replicas_in_sync`); the functions below take either.
"""

import contextlib
import json
import os
from typing import Any, Optional, Sequence, Tuple

from absl import logging
import gin
import keras

from diffstride.experiments import keras_internals

# Keras' environment variables of a multi-process run (see the docstring).
PROCESS_ENV = ('KERAS_DISTRIBUTION_JOB_ADDRESSES',
               'KERAS_DISTRIBUTION_NUM_PROCESSES',
               'KERAS_DISTRIBUTION_PROCESS_ID')
TF_STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')
KERAS_DISTRIBUTIONS = ('default', 'data_parallel')
STRATEGIES = TF_STRATEGIES + ('data_parallel',)


class KerasDistribution:
  """A run's device layout on JAX: one device, or `keras.distribution`'s
  data parallelism, set for the process while the run lasts (`release`).

  Attributes:
    distribution: the `keras.distribution.Distribution`, or None.
  """

  def __init__(self, distribution=None):
    self.distribution = distribution
    if distribution is not None:
      keras.distribution.set_distribution(distribution)

  def scope(self):
    return contextlib.nullcontext()  # Set for the process (fit reads it).

  @property
  def num_replicas_in_sync(self) -> int:
    if self.distribution is None:
      return 1
    return int(self.distribution.device_mesh.devices.size)

  @property
  def name(self) -> str:
    return (type(self.distribution).__name__ if self.distribution is not None
            else 'OneDevice')

  @property
  def process_share(self) -> Tuple[int, int]:
    """(this process's index, the number of processes)."""
    if self.distribution is None:
      return 0, 1
    import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    return jax.process_index(), jax.process_count()

  def input_is_sharded(self, sharded: bool) -> None:
    """Tells Keras whether each process's input is its share already
    (NumPy batches split by `process_share`), or a whole `tf.data.Dataset`
    for Keras to shard."""
    if self.distribution is not None:
      self.distribution.auto_shard_dataset = not sharded

  def release(self):
    if self.distribution is not None:
      keras.distribution.set_distribution(None)


def strategy_name(strategy) -> str:
  """The strategy's class name (metrics.json), or the Keras distribution's."""
  if isinstance(strategy, KerasDistribution):
    return strategy.name
  return type(strategy).__name__


def process_share(strategy) -> Tuple[int, int]:
  """(this process's index, the number of processes) of a Keras
  distribution; (0, 1) for a `tf.distribute` strategy (tf.distribute shards
  its input itself)."""
  if isinstance(strategy, KerasDistribution):
    return strategy.process_share
  return 0, 1


def input_is_sharded(strategy, sharded: bool) -> None:
  """See `KerasDistribution.input_is_sharded`; nothing for tf.distribute."""
  if isinstance(strategy, KerasDistribution):
    strategy.input_is_sharded(sharded)


def release(strategy) -> None:
  """Undoes what `make_strategy` set for the process (a Keras
  distribution); nothing for a `tf.distribute` strategy."""
  if isinstance(strategy, KerasDistribution):
    strategy.release()


def _keras_distribution(name: str) -> KerasDistribution:
  backend = keras.backend.backend()
  if name not in KERAS_DISTRIBUTIONS:
    raise ValueError(
        f'make_strategy.name = {name!r} is a tf.distribute strategy: it needs '
        f'the TensorFlow backend (KERAS_BACKEND={backend} here). On JAX use '
        f"one of {KERAS_DISTRIBUTIONS} ('data_parallel': "
        'keras.distribution.DataParallel).')
  processes = _num_processes()
  if name == 'default':
    if processes > 1:
      raise ValueError(
          f'KERAS_DISTRIBUTION_NUM_PROCESSES = {processes}: several processes '
          "train together under make_strategy.name = 'data_parallel' only.")
    return KerasDistribution()
  if backend != 'jax':
    raise ValueError(
        f"make_strategy.name = 'data_parallel' uses keras.distribution, which "
        f'Keras {keras.__version__} implements for JAX only (KERAS_BACKEND='
        f'{backend} here).')
  if processes > 1:
    _initialize_processes()
  distribution = keras.distribution.DataParallel()
  logging.info('keras.distribution.DataParallel over %d devices: %s',
               distribution.device_mesh.devices.size,
               ', '.join(str(d) for d in distribution.device_mesh.devices))
  return KerasDistribution(distribution)


def _num_processes() -> int:
  value = os.environ.get('KERAS_DISTRIBUTION_NUM_PROCESSES', '').strip()
  try:
    return int(value) if value else 1
  except ValueError as error:
    raise ValueError('KERAS_DISTRIBUTION_NUM_PROCESSES must be an integer, '
                     f'got {value!r}.') from error


_PROCESSES_INITIALIZED = []


def _initialize_processes() -> None:
  """Joins this process to the others (`keras.distribution.initialize`
  from the environment variables), once per process, before any JAX
  computation. CPU devices of several processes reach each other through
  gloo."""
  if _PROCESSES_INITIALIZED:
    return
  missing = [name for name in PROCESS_ENV if not os.environ.get(name)]
  if missing:
    raise ValueError(
        'A data_parallel run over several processes needs the environment '
        f'variables {", ".join(PROCESS_ENV)}; missing: {", ".join(missing)}.')
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  keras.distribution.initialize()
  _PROCESSES_INITIALIZED.append(True)


@gin.configurable
def make_strategy(name: str = 'default',
                  devices: Optional[Sequence[str]] = None,
                  tpu_address: Optional[str] = None) -> Any:
  """Builds the strategy (the backend's) and logs what runs where."""
  if name not in STRATEGIES:
    raise ValueError(f'Unknown strategy {name!r}: use one of {STRATEGIES}.')
  if keras.backend.backend() != 'tensorflow':
    return _keras_distribution(name)
  if name == 'data_parallel':
    raise ValueError(
        "make_strategy.name = 'data_parallel' is keras.distribution, which "
        f'Keras {keras.__version__} implements for JAX only; on TensorFlow '
        "use make_strategy.name = 'mirrored' (tf.distribute).")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
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
  logging.info('Strategy %s with %d replica(s); devices: %s',
               type(strategy).__name__, strategy.num_replicas_in_sync,
               ', '.join(d.name for d in tf.config.list_logical_devices()))
  if name == 'multi_worker':
    task = json.loads(os.environ['TF_CONFIG']).get('task', {})
    logging.info('Multi-worker task: %s', task)
  return strategy


def model_scope(model: keras.Model):
  """The scope of the strategy `model` was built under (TensorFlow), or a
  no-op (JAX: a Keras distribution is set for the whole process)."""
  strategy = getattr(model, 'distribute_strategy', None)
  return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_chief(strategy) -> bool:
  """True on the worker that writes checkpoints, logs and metrics (on JAX,
  process 0)."""
  if strategy is None or isinstance(strategy, KerasDistribution):
    if keras.backend.backend() == 'jax':
      import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
      return jax.process_index() == 0
    return True
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return (resolver.task_type == 'chief' or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))


def is_multi_worker(strategy) -> bool:
  if isinstance(strategy, KerasDistribution):
    return False
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def outputs_dir(workdir: str, strategy) -> Optional[str]:
  """Where this process writes the run's outputs (logs, checkpoints,
  metrics.json): the workdir on the chief, None on another tf.distribute
  worker (it writes none). On JAX over several processes, process i > 0
  writes the same files into `workdir/process-<i>`: every process has to
  take part in every computation on the replicated weights, saving
  included (Keras creates variables while saving), so every process runs
  the chief's callbacks."""
  if is_chief(strategy):
    return workdir
  if isinstance(strategy, KerasDistribution):
    return os.path.join(workdir, f'process-{strategy.process_share[0]}')
  return None


def worker_backup_dir(backup_dir: str, strategy) -> str:
  """Where this worker keeps its BackupAndRestore state.

  The chief uses `backup_dir`; other workers a sub-folder of their own, so
  that workers sharing a file system do not write the same files. Training
  is synchronous, so every worker's backup holds the same weights.
  """
  if is_chief(strategy):
    return backup_dir
  if isinstance(strategy, KerasDistribution):
    return os.path.join(backup_dir,
                        f'process-{strategy.process_share[0]}')
  resolver = strategy.cluster_resolver
  return os.path.join(backup_dir,
                      f'{resolver.task_type}-{resolver.task_id}')


def prepare_for_fit(model: keras.Model, strategy, train_data) -> None:
  """Lets `model.fit` run under `strategy`; call after `model.compile`.

  Keras 3 cannot `fit` under MultiWorkerMirroredStrategy
  (keras-team/keras#20585): before training it averages a data batch across
  workers eagerly to learn the input shapes, and every step it reduces the
  scalar logs in a way that fails on scalars. Under that strategy, this
  works around both (see `keras_internals`, item 3): the model's losses and
  metrics are built from the train `tf.data.Dataset`'s `element_spec`, and
  the logs are reduced as scalars. Nothing to do for other strategies.
  """
  if not is_multi_worker(strategy):
    return
  keras_internals.patch_multi_worker_reduction()
  keras_internals.build_from_element_spec(model, strategy,
                                          train_data.element_spec)
