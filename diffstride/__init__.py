"""diffstride: learnable strides for convolutional networks (Keras 3).

    import diffstride
    layer = diffstride.DiffStride(strides=(2.0, 2.0),
                                  data_format='channels_last')

This is the core library: layers, models, the complexity penalty and the
export to fixed strides. It imports Keras and NumPy only (TensorFlow only
where Keras' backend is TensorFlow), and runs on Keras' TensorFlow, JAX and
PyTorch backends (see `diffstride.sized_layer`).
The experiment harness (training loop, datasets, gin, reports) is
`diffstride.experiments`.
"""

from diffstride import methods
from diffstride import resnet
from diffstride import sizes
from diffstride.audio_model import AudioClassifier
from diffstride.frontend import MelFrontend
from diffstride.methods import diffstride_layers
from diffstride.methods import learned_strides
from diffstride.layers import BlurPool
from diffstride.layers import dct_diffstride_output_size
from diffstride.layers import DCTDiffStride
from diffstride.layers import diffstride1d_output_length
from diffstride.layers import diffstride_output_size
from diffstride.layers import DiffStride
from diffstride.layers import DiffStride1D
from diffstride.layers import FixedSpectralPooling
from diffstride.layers import LearnablePolyphasePooling
from diffstride.layers import LearnableSpectralPooling
from diffstride.layers import PolyphasePooling
from diffstride.layers import SpatialPooling
from diffstride.layers import StrideConstraint
from diffstride.recalibration import BatchNormRecalibration
from diffstride.recalibration import recalibrate_batch_norm
from diffstride.recalibration import RecalibrationResult
from diffstride.sizes import size_tracker
from diffstride.sizes import track_sizes
from diffstride.sizes import update_sizes
from diffstride.strides import minimum_stride
from diffstride.strides import stride_pair

__version__ = '0.1.0'
