"""`DiffStride1D` under its original module name (it lives in
`diffstride.layers.diff_stride_1d`)."""

from diffstride.layers.diff_stride_1d import diffstride1d_output_length
from diffstride.layers.diff_stride_1d import DiffStride1D

__all__ = ['diffstride1d_output_length', 'DiffStride1D']
