"""The core without TensorFlow: the README's own-model example on JAX and
PyTorch, in a process where any `import tensorflow` fails.

Each script blocks TensorFlow (`sys.modules['tensorflow'] = None`: an import
then raises ImportError, as in an environment without it), imports every
core module, runs the README's "Using the layer in your own model" block as
printed, trains it for 3 epochs (Adam 0.05, random data) with the strides
crossing output-size boundaries (JAX: under jax.jit, rebuilt at each size
change), then saves and loads it as `.keras`. On JAX the same block without
its `track_sizes` line trains too, uncompiled: Keras compiles no model whose
DiffStride sizes nothing keeps current.
"""

import numpy as np
import pytest

import subprocess_testing  # tests/ is on sys.path.  # pylint: disable=g-bad-import-order

_SCRIPT = r'''
import json, os, re, sys
sys.modules['tensorflow'] = None  # Any TensorFlow import now fails.
import keras
import numpy as np
import diffstride
from diffstride import complexity, export, methods, recalibration, sizes

text = open('README.md', encoding='utf-8').read()
section = text[text.index('## Using the layer in your own model'):]
code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
result = {{}}
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 32, 32, 3)).astype('float32')
y = rng.integers(0, 10, 64)

def build(code):
  namespace = {{}}
  keras.utils.set_random_seed(0)
  exec(compile(code, 'README.md', 'exec'), namespace)
  model = namespace['model']
  model.compile(keras.optimizers.Adam(0.05),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model

if keras.backend.backend() == 'jax':
  untracked = build(code.replace('diffstride.track_sizes(model)', ''))
  result['untracked_jit'] = bool(untracked.jit_compile)
  before = [sorted(l.output_sizes().values())
            for l in diffstride.diffstride_layers(untracked)]
  untracked.fit(x, y, batch_size=16, epochs=1, verbose=0)
  result['untracked_sizes_moved'] = before != [
      sorted(l.output_sizes().values())
      for l in diffstride.diffstride_layers(untracked)]
  result['tracked_jit'] = None

model = build(code)
if keras.backend.backend() == 'jax':
  result['tracked_jit'] = bool(model.jit_compile)
layers = diffstride.diffstride_layers(model)
sizes_now = lambda: [sorted(layer.output_sizes().values()) for layer in layers]
result['sizes_before'] = sizes_now()
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
strides = diffstride.learned_strides(model)
result['strides'] = strides
result['loss'] = history.history['loss']
tracker = diffstride.size_tracker(model)
result['size_changes'] = tracker.size_changes
result['recompilations'] = tracker.recompilations['train']
result['sizes_after'] = sizes_now()
logits = keras.ops.convert_to_numpy(model.predict(x[:8], verbose=0))
model.save('/tmp/own_model_{backend}.keras')
loaded = keras.models.load_model('/tmp/own_model_{backend}.keras')
result['loaded_strides_equal'] = diffstride.learned_strides(loaded) == strides
result['loaded_max_diff'] = float(np.max(np.abs(keras.ops.convert_to_numpy(
    loaded.predict(x[:8], verbose=0)) - logits)))
result['tensorflow_modules'] = sorted(
    m for m, v in sys.modules.items()
    if m.split('.')[0] == 'tensorflow' and v is not None)
print('RESULT ' + json.dumps(result))
'''


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['jax', 'torch'])
def test_readme_own_model_trains_without_tensorflow(backend):
  result = subprocess_testing.run_backend_script(
      _SCRIPT.format(backend=backend), backend, timeout=900)
  assert result['tensorflow_modules'] == []
  if backend == 'jax':
    # Untracked: not compiled, and exact as its sizes change; tracked: jit.
    assert not result['untracked_jit'] and result['untracked_sizes_moved']
    assert result['tracked_jit']
  losses = result['loss']
  assert len(losses) == 3 and all(np.isfinite(losses))
  # The strides moved across at least one output-size boundary, and the
  # compiled step (JAX) was rebuilt for it.
  moved = [abs(s - 2.0) for pair in result['strides'].values() for s in pair]
  assert max(moved) > 0.05, result['strides']
  assert result['sizes_after'] != result['sizes_before'], result
  if backend == 'jax':
    assert result['size_changes'] >= 1, result
    assert result['recompilations'] >= 1, result
  assert result['loaded_strides_equal']
  assert result['loaded_max_diff'] < 1e-4


def test_core_install_needs_no_tensorflow():
  """`pip install diffstride` (no extra) and the jax / torch extras do not
  bring TensorFlow; the tensorflow and experiments extras do."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  requires = metadata.requires('diffstride')
  extras_of = {}
  for requirement in requires:
    name = re.match(r'[A-Za-z0-9_.\-]+', requirement).group(0).lower()
    extra = re.search(r'extra\s*==\s*"([^"]+)"', requirement)
    extras_of.setdefault(name, set()).add(extra.group(1) if extra else None)
  assert extras_of['tensorflow'] == {'tensorflow', 'experiments'}
  assert None in extras_of['keras'] and None in extras_of['numpy']
  assert extras_of['jax'] == {'jax'} and extras_of['torch'] == {'torch'}
