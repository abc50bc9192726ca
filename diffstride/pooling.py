"""The 2-D downsampling layers under their original module name.

Each layer lives in its own module of `diffstride.layers`; this module keeps
the names that configs, saved code and the official implementation's users
know (`diffstride.pooling.DiffStride`, `LearnableSpectralPooling`, ...).
"""

from diffstride.layers.common import CHANNELS_FIRST
from diffstride.layers.common import CHANNELS_LAST
from diffstride.layers.diff_stride import diffstride_output_size
from diffstride.layers.diff_stride import DiffStride
from diffstride.layers.diff_stride import LearnableSpectralPooling
from diffstride.layers.fixed_spectral_pooling import FixedSpectralPooling
from diffstride.layers.spatial_pooling import SpatialPooling
from diffstride.layers.stride_constraint import StrideConstraint

__all__ = ['CHANNELS_FIRST', 'CHANNELS_LAST', 'diffstride_output_size',
           'DiffStride', 'LearnableSpectralPooling', 'FixedSpectralPooling',
           'SpatialPooling', 'StrideConstraint']
