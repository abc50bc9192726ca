"""TensorBoard scalars, written the same way on every backend.

`ScalarWriter(logdir)` appends scalar events to a TensorBoard log directory
through the `tensorboard` package's own event writer, and `read_scalars(path)`
reads an event file back, so the harness logs and reports on JAX without
TensorFlow installed. The values are written as `tf.summary.scalar`
writes them (a float32 scalar tensor with the 'scalars' plugin's metadata):
TensorBoard, `tf.compat.v1.train.summary_iterator` and the report read them
alike.
"""

import time
from typing import Iterator, Mapping, Tuple

import numpy as np

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

from diffstride.experiments import files

_SCALARS_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))


def scalar_value(tag: str, value: float) -> summary_pb2.Summary.Value:
  """One scalar summary value: `tag`, a float32 scalar tensor."""
  tensor = tensor_pb2.TensorProto(
      dtype=types_pb2.DT_FLOAT, float_val=[float(value)],
      tensor_shape=tensor_shape_pb2.TensorShapeProto())
  return summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                   metadata=_SCALARS_METADATA)


class ScalarWriter:
  """Scalar events in one TensorBoard log directory (created if missing).

  Example:
    writer = ScalarWriter('/tmp/run/tensorboard/train')
    writer.write(step=100, values={'strides/stage1/height': 1.7})
    writer.close()
  """

  def __init__(self, logdir: str):
    files.makedirs(logdir)
    self._writer = event_file_writer.EventFileWriter(logdir)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    """One event at `step` holding every `tag: value` of `values`."""
    if not values:
      return
    summary = summary_pb2.Summary(
        value=[scalar_value(tag, value) for tag, value in values.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(),
                                           step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_scalars(path: str) -> Iterator[Tuple[int, str, float]]:
  """(step, tag, value) of every scalar in the event file `path`, in order:
  tensor scalars (`tf.summary.scalar`, `ScalarWriter`) and the older
  `simple_value` ones."""
  for event in event_file_loader.LegacyEventFileLoader(path).Load():
    for value in event.summary.value:
      if value.HasField('tensor'):
        array = tensor_util.make_ndarray(value.tensor)
        if array.size != 1 or not np.issubdtype(array.dtype, np.number):
          continue
        number = float(array.reshape(()))
      elif value.HasField('simple_value'):
        number = float(value.simple_value)
      else:
        continue
      yield int(event.step), value.tag, number
