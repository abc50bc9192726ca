"""Makes the package's layers and models reachable from gin files.

Keras 3 layers must not be decorated with `@gin.configurable` (gin's wrapper
breaks Keras 3's `__new__`/`__init__` tracking and crashes at instantiation).
`gin.register` records the class in gin's registry without touching it, so
`@DiffStride` in a gin file builds a plain `diffstride.DiffStride` that still
serializes and loads like any Keras layer.

Importing `diffstride` registers everything; in gin, both `DiffStride` and
`diffstride.DiffStride` name the layer.
"""

import gin

from diffstride import pooling

_MODULE = 'diffstride'

for _cls in (pooling.DiffStride, pooling.FixedSpectralPooling,
             pooling.SpatialPooling, pooling.StrideConstraint):
  gin.register(_cls, module=_MODULE)
# The official name of DiffStride, for gin files written for the official code.
gin.register('LearnableSpectralPooling', module=_MODULE)(
    pooling.DiffStride)

# Audio (imported here so that `import diffstride` makes them reachable from
# gin: `@audio_datasets`, `@audio_classifier`, `@mel_frontend`, ...).
from diffstride import audio_data as _audio_data  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from diffstride import audio_model as _audio_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffstride import frontend as _frontend  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffstride import pooling1d as _pooling1d  # pylint: disable=g-import-not-at-top,wrong-import-position

for _cls in (_pooling1d.DiffStride1D, _frontend.MelFrontend,
             _audio_model.AudioClassifier,
             _audio_model.TimeFrequencyStrideLogger):
  gin.register(_cls, module=_MODULE)
