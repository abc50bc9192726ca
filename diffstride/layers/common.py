"""What the downsampling layers check and decide alike: data formats, input
ranks and sizes, and the choice between the matmul and the FFT crop."""

from typing import Optional, Sequence, Tuple

from keras import ops

CHANNELS_FIRST = 'channels_first'
CHANNELS_LAST = 'channels_last'
DATA_FORMATS = (CHANNELS_FIRST, CHANNELS_LAST)
IMPLEMENTATIONS = ('auto', 'matmul', 'fft')
# Above this many input samples per map, 'auto' uses the FFT crop: the dense
# operators cost O(N (h' + w')) per map against O(N log N) for FFTs. Measured
# on CPU (forward + backward, channels_last, strides 2): matmul is 2.8x
# faster than the FFT path on 56x56 maps, 2.4x on 112x112, 1.7x on 224x224
# and about even on 320x320. For 1-D signals: 2048 samples.
MATMUL_MAX_SAMPLES = {2: 320 * 320, 1: 2048}


def check_data_format(data_format: str) -> bool:
  """Returns True for channels_first; raises on anything unknown."""
  if data_format not in DATA_FORMATS:
    raise ValueError(
        f'`data_format` must be one of {DATA_FORMATS}, got {data_format!r}.')
  return data_format == CHANNELS_FIRST


def check_implementation(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'`implementation` must be one of {IMPLEMENTATIONS}, '
                     f'got {implementation!r}.')
  return implementation


def spatial_dims(input_shape, channels_first: bool, layer_name: str,
                 rank: int = 4) -> Tuple[Optional[int], ...]:
  """The spatial sizes of an input shape of `rank` (None where unknown)."""
  shape = tuple(input_shape)
  if len(shape) != rank:
    layout = ('(batch, height, width, channels) or (batch, channels, height, '
              'width)' if rank == 4 else
              '(batch, length, channels) or (batch, channels, length)')
    raise ValueError(
        f'{layer_name} expects a rank-{rank} input {layout}, got shape '
        f'{shape} (rank {len(shape)}).')
  return shape[2:] if channels_first else shape[1:rank - 1]


def subsampled_shape(input_shape, strides: Tuple[int, int],
                     channels_first: bool, layer_name: str) -> Tuple:
  """The output shape of subsampling by integer `strides` from index 0:
  ceil(H / s_h) x ceil(W / s_w), None where unknown."""
  dims = spatial_dims(input_shape, channels_first, layer_name)
  out = tuple(None if d is None else -(-d // s) for d, s in zip(dims, strides))
  if channels_first:
    return (input_shape[0], input_shape[1]) + out
  return (input_shape[0],) + out + (input_shape[3],)


def spatial_dims_now(x, channels_first: bool, layer_name: str,
                     rank: int = 4) -> Tuple:
  """x's spatial sizes: ints where static, scalar tensors where not."""
  dims = spatial_dims(x.shape, channels_first, layer_name, rank)
  first = 2 if channels_first else 1
  return tuple(d if d is not None else ops.shape(x)[first + i]
               for i, d in enumerate(dims))


def use_fft(implementation: str, dims: Sequence) -> bool:
  """Whether the crop of an input of spatial sizes `dims` uses FFTs."""
  if implementation != 'auto':
    return implementation == 'fft'
  if not all(isinstance(d, int) for d in dims):
    return False
  samples = 1
  for d in dims:
    samples *= d
  return samples > MATMUL_MAX_SAMPLES[len(dims)]
