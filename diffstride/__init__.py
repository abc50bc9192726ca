"""diffstride: learnable strides for convolutional networks (Keras 3)."""

from diffstride.pooling import DiffStride
from diffstride.pooling import FixedSpectralPooling
from diffstride.pooling import LearnableSpectralPooling
from diffstride.pooling import SpatialPooling
from diffstride.pooling import StrideConstraint

__version__ = '0.1.0'
