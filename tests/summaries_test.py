"""The TensorBoard scalar writer and reader the harness uses on every
backend (diffstride/experiments/summaries.py)."""

import glob
import os

import tensorflow as tf

from diffstride.experiments import summaries


def test_scalars_round_trip_and_read_as_tf_summary_writes_them(tmp_path):
  logdir = str(tmp_path / 'logs' / 'train')  # Created by the writer.
  writer = summaries.ScalarWriter(logdir)
  writer.write(0, {'strides/a/height': 1.5, 'loss': 2.25})
  writer.write(7, {'strides/a/height': 1.75})
  writer.write(8, {})  # Nothing to write: no event.
  writer.close()
  (path,) = glob.glob(os.path.join(logdir, 'events.*'))
  assert list(summaries.read_scalars(path)) == [
      (0, 'strides/a/height', 1.5), (0, 'loss', 2.25),
      (7, 'strides/a/height', 1.75)]
  # TensorFlow reads them as it reads tf.summary.scalar's: float32 scalar
  # tensors of the 'scalars' plugin.
  read = [(event.step, value.tag, float(tf.make_ndarray(value.tensor)),
           value.metadata.plugin_data.plugin_name)
          for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value]
  assert read == [(0, 'strides/a/height', 1.5, 'scalars'),
                  (0, 'loss', 2.25, 'scalars'),
                  (7, 'strides/a/height', 1.75, 'scalars')]


def test_reads_what_tf_summary_writes(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default(step=3):
    tf.summary.scalar('x', 0.5)
    tf.summary.text('note', 'not a scalar')
  writer.close()
  (path,) = glob.glob(os.path.join(str(tmp_path), 'events.*'))
  assert list(summaries.read_scalars(path)) == [(3, 'x', 0.5)]
