r"""Stride export: from a trained DiffStride ResNet to a fixed-stride model.

A DiffStride network learns its strides; to deploy it one builds the same
network with fixed downsampling and copies every other weight:

  * 'fixed_spectral': `FixedSpectralPooling` at the learned (fractional)
    strides. Its maps are floor(H / S) (rows rounded down to even), smaller
    than DiffStride's about H / S + 2R: this is the model whose compute the
    learned strides promise, but the layers after each pooling see smaller
    maps than in training.
  * 'fixed_spectral_matched': `FixedSpectralPooling` at the stride that gives
    DiffStride's own output size (S' = H / (h' + 1/2)), so every layer sees
    the map size it was trained at; only the mask's soft ramp of width R
    becomes a hard box. With a hard DiffStride mask (R -> 0) the two models
    are the same function (`tests/export_test.py`).
  * 'strided_conv': strided convolutions with the learned strides rounded to
    the nearest integer (at least 1), the cheapest to run anywhere.
  * 'frozen': the same pooling layers with their strides frozen
    (trainable=False) at the learned values: the same function as the
    trained network, with fixed sizes. The fixed-stride export of a
    DCT-DiffStride network (whose transform FixedSpectralPooling, a DFT
    crop, does not compute): `modes_for(model)` is ('frozen',
    'strided_conv') for it, `MODES` for a DiffStride network.

    from diffstride import export
    fixed = export.export_model(model, 'fixed_spectral', (32, 32))

The command line that exports and evaluates a finished training run is
`python -m diffstride.experiments.export_run` (part of the harness).

Backends: the strides and map sizes are read on the host and the weights
copied as NumPy arrays, so the export runs on Keras' TensorFlow, JAX and
PyTorch backends alike.
"""

from typing import Any, List, Tuple

import keras
from keras import ops

from diffstride import methods
from diffstride import pooling
from diffstride import resnet
from diffstride import stages
from diffstride.strides import minimum_stride
from diffstride.strides import stride_pair

MODES = ('fixed_spectral', 'fixed_spectral_matched', 'strided_conv')
FROZEN = 'frozen'
DCT_MODES = (FROZEN, 'strided_conv')
_ALL_MODES = MODES + (FROZEN,)


def _source_method(model) -> methods.DownsamplingMethod:
  """The learned-stride method of `model`'s pooling layers, or a ValueError."""
  method = methods.for_layer_cls(model.pooling_cls)
  if method not in (methods.DIFFSTRIDE, methods.DCT_DIFFSTRIDE):
    raise ValueError(
        'export_model exports DiffStride and DCT-DiffStride networks; this '
        f'one has pooling_cls={resnet.pooling_cls_name(model.pooling_cls)}.')
  return method


def modes_for(model: resnet.Resnet) -> Tuple[str, ...]:
  """The export modes of a DiffStride (`MODES`) or DCT-DiffStride
  (`DCT_MODES`) network."""
  if _source_method(model) is methods.DCT_DIFFSTRIDE:
    return DCT_MODES
  return MODES


def effective_strides(layer: pooling.DiffStride,
                      input_size: Tuple[int, int]) -> Tuple[float, float]:
  """The (S_h, S_w) the layer applies on an (H, W) input: its weight raised to
  N / (N - R) (and a shared stride used for both axes), as in its forward."""
  floors = [float(minimum_stride(n, layer.smoothness_factor))
            for n in input_size]
  s_h, s_w = stride_pair(layer.strides)
  if layer.shared_stride:
    s = max(s_h, max(floors))
    return s, s
  return max(s_h, floors[0]), max(s_w, floors[1])


def _matched_stride(size_in: int, size_out: int) -> float:
  """A stride at which FixedSpectralPooling outputs `size_out` (float32
  floor(size_in / S) == size_out); at least 1."""
  return max(float(size_in) / (size_out + 0.5), 1.0)


def exported_strides(model: resnet.Resnet, mode: str,
                     input_size: Tuple[int, int]) -> List[Any]:
  """The `strides` argument of the exported Resnet: `model.block_strides`
  with each DiffStride position replaced per `mode` ((S_h, S_w) pairs)."""
  if mode not in _ALL_MODES:
    raise ValueError(f'Unknown export mode {mode!r}: use one of '
                     f'{_ALL_MODES}.')
  if mode not in modes_for(model) and mode != FROZEN:
    raise ValueError(
        f'Export mode {mode!r} replaces DiffStride by FixedSpectralPooling (a '
        'DFT crop); a DCT-DiffStride network exports with one of '
        f'{DCT_MODES}.')
  positions = model.downsampling_positions()
  sizes = {id(layer): (size_in, size_out) for layer, size_in, size_out
           in stages.downsampling_sizes(model, input_size)}
  strides = list(model.block_strides)
  for index, layer in positions.items():
    if not isinstance(layer, pooling.DiffStride):
      continue
    size_in, size_out = sizes[id(layer)]
    learned = effective_strides(layer, size_in)
    if mode in ('fixed_spectral', FROZEN):
      strides[index] = learned
    elif mode == 'fixed_spectral_matched':
      strides[index] = (_matched_stride(size_in[0], size_out[0]),
                        _matched_stride(size_in[1], size_out[1]))
    else:
      strides[index] = tuple(max(1, int(round(s))) for s in learned)
  return strides


def _non_pooling_weights(model) -> list:
  pooled = {id(w) for layer in methods.downsampling_layers(model)
            for w in layer.weights}
  return [w for w in model.weights if id(w) not in pooled]


def copy_weights(source: keras.Model, target: keras.Model):
  """Copies every weight except the pooling layers' strides, in order.

  Raises:
    ValueError: if the two networks' other weights do not match one to one.
  """
  src, dst = _non_pooling_weights(source), _non_pooling_weights(target)
  if len(src) != len(dst) or any(
      tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
    raise ValueError(
        'The exported network does not have the same weights as the source '
        f'({len(src)} vs {len(dst)} tensors, or different shapes).')
  for a, b in zip(src, dst):
    b.assign(ops.convert_to_numpy(a.value))


def export_model(model: resnet.Resnet, mode: str,
                 input_size: Tuple[int, int]) -> resnet.Resnet:
  """The fixed-stride deployment of a built DiffStride `resnet.Resnet`.

  Args:
    model: a built `Resnet` with `pooling_cls=DiffStride` or
      `DCTDiffStride`.
    mode: 'fixed_spectral', 'fixed_spectral_matched', 'strided_conv' or
      'frozen' (see the module docstring; `modes_for(model)`).
    input_size: (H, W) of the images the model runs on.

  Returns:
    A new, built `Resnet` (same filters, blocks, head and data format) with
    every convolution, batch-norm and dense weight copied. It maps
    [B, H, W, C] images to [B, num_output_classes] logits like the source.
  """
  if not isinstance(model, resnet.Resnet):
    raise ValueError(f'export_model takes a diffstride.resnet.Resnet, got '
                     f'{type(model).__name__}.')
  config = model.get_config()
  config['strides'] = exported_strides(model, mode, input_size)
  if mode == FROZEN:
    config['pooling_kwargs'] = dict(config['pooling_kwargs'],
                                    trainable=False)
  else:
    config['pooling_cls'] = (None if mode == 'strided_conv'
                             else methods.SPECTRAL_POOLING.layer_name)
    config['pooling_kwargs'] = {}
  config['name'] = f'{model.name}_{mode}'
  exported = resnet.Resnet.from_config(config)
  exported.build((None,) + tuple(input_size)
                 + (int(model.stem_conv.kernel.shape[2]),))
  copy_weights(model, exported)
  return exported
