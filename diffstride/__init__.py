"""diffstride: learnable strides for convolutional networks (Keras 3).

    import diffstride
    layer = diffstride.DiffStride(strides=(2.0, 2.0),
                                  data_format='channels_last')
"""

from diffstride import configurables as _configurables
from diffstride import resnet
from diffstride.pooling import DiffStride
from diffstride.pooling import FixedSpectralPooling
from diffstride.pooling import LearnableSpectralPooling
from diffstride.pooling import SpatialPooling
from diffstride.pooling import diffstride_output_size
from diffstride.pooling import StrideConstraint
from diffstride.pooling1d import DiffStride1D
from diffstride.pooling1d import diffstride1d_output_length
from diffstride.frontend import MelFrontend
from diffstride.audio_model import AudioClassifier

__version__ = '0.1.0'
