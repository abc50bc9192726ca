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

__version__ = '0.1.0'
