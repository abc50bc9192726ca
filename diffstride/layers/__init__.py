"""The downsampling layers, one per module."""

from diffstride.layers.blur_pool import BlurPool
from diffstride.layers.dct_diff_stride import dct_diffstride_output_size
from diffstride.layers.dct_diff_stride import DCTDiffStride
from diffstride.layers.diff_stride import diffstride_output_size
from diffstride.layers.diff_stride import DiffStride
from diffstride.layers.diff_stride import LearnableSpectralPooling
from diffstride.layers.diff_stride_1d import diffstride1d_output_length
from diffstride.layers.diff_stride_1d import DiffStride1D
from diffstride.layers.fixed_spectral_pooling import FixedSpectralPooling
from diffstride.layers.learnable_polyphase_pooling import LearnablePolyphasePooling
from diffstride.layers.polyphase_pooling import PolyphasePooling
from diffstride.layers.spatial_padding import SpatialPadding
from diffstride.layers.spatial_pooling import SpatialPooling
from diffstride.layers.stride_constraint import AxisFloorConstraint
from diffstride.layers.stride_constraint import StrideConstraint
