"""Makes the package's layers and models reachable from gin files.

The one place where the core library (`diffstride.*`, which does not import
gin) meets gin. Keras 3 layers must not be decorated with `@gin.configurable`
(gin's wrapper breaks Keras 3's `__new__`/`__init__` tracking and crashes at
instantiation); `gin.register` records a class in gin's registry without
touching it, so `@DiffStride` in a gin file builds a plain
`diffstride.DiffStride` that still serializes and loads like any Keras layer.
Functions registered this way are configured only where a gin file refers to
them (`train.model_fn = @resnet18`, `audio_classifier.frontend_fn =
@mel_frontend`).

The harness's own functions (`train`, `image_datasets`, `learning_rate`, ...)
are decorated with `@gin.configurable` where they are defined.

Importing `diffstride.experiments` registers everything; in gin, both
`DiffStride` and `diffstride.DiffStride` name the layer.
"""

import gin

from diffstride import audio_model
from diffstride import frontend
from diffstride import methods
from diffstride import pooling
from diffstride import pooling1d
from diffstride import resnet
from diffstride.experiments import callbacks

_MODULE = 'diffstride'

_CORE = (
    # Downsampling layers: every registered method's layer, plus the rest.
    *(m.layer_cls for m in methods.all_methods() if m.layer_cls is not None),
    pooling.StrideConstraint, pooling1d.DiffStride1D,
    # Networks.
    resnet.ResidualLayer, resnet.ResnetBlock, resnet.Resnet, resnet.resnet18,
    resnet.resnet56,
    # Audio.
    frontend.MelFrontend, frontend.mel_frontend, audio_model.AudioClassifier,
    audio_model.audio_classifier,
    # Callbacks of the harness that gin files list in `train.extra_callbacks`.
    callbacks.TimeFrequencyStrideLogger,
)

for _obj in _CORE:
  gin.register(_obj, module=_MODULE)
# Other names of registered layers (e.g. 'LearnableSpectralPooling', the
# official name of DiffStride, for gin files written for the official code).
for _method in methods.all_methods():
  for _name in _method.layer_names:
    if _name != _method.layer_cls.__name__:
      gin.register(_name, module=_MODULE)(_method.layer_cls)
