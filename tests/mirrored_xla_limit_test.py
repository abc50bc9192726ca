"""Whose limit is XLA under MirroredStrategy over CPUs: TensorFlow's.

The harness refuses `train.jit_compile = True` with a MirroredStrategy over
several CPU devices. This proves the reason it gives, with plain TensorFlow
(no DiffStride, no Keras `fit`): a replica's step compiled with XLA that
updates the mirrored variables fails on two logical CPU devices, while the
same step with only its forward and backward pass compiled runs. (When a
TensorFlow release lifts the limit, the first assertion fails: then the
refusal in `training._check_jit_compile` can go.)
"""

import textwrap

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

_SCRIPT = textwrap.dedent('''
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
      model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      optimizer = keras.optimizers.SGD(0.1)
      optimizer.build(model.trainable_variables)
    x = tf.random.stateless_normal((8, 4), seed=(0, 1))
    y = tf.random.stateless_normal((8, 3), seed=(0, 2))

    def grads_of(x, y):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y)) / 2
      return loss, tape.gradient(loss, model.trainable_variables)

    @tf.function(jit_compile=True)
    def whole_step(x, y):  # Forward, backward and update in XLA.
      loss, grads = grads_of(x, y)
      optimizer.apply(grads, model.trainable_variables)
      return loss

    compiled_grads = tf.function(grads_of, jit_compile=True)

    def split_step(x, y):  # Only forward and backward in XLA.
      loss, grads = compiled_grads(x, y)
      optimizer.apply(grads, model.trainable_variables)
      return loss

    result = {}
    for name, replica_step in (('whole', whole_step), ('split', split_step)):
      data = strategy.experimental_distribute_dataset(
          tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

      @tf.function
      def step(batch):
        return strategy.run(replica_step, args=batch)

      try:
        step(next(iter(data)))
        result[name] = 'ran'
      except tf.errors.InvalidArgumentError as e:
        result[name] = str(e)[:2000]
    print('RESULT ' + json.dumps(result))
''')


def test_xla_step_updating_mirrored_variables_fails_on_cpus_in_tensorflow():
  result = subprocess_testing.run_backend_script(_SCRIPT, 'tensorflow')
  assert result['split'] == 'ran'
  assert result['whole'] != 'ran'
  assert 'Trying to access resource' in result['whole']
  assert 'located in device' in result['whole']
