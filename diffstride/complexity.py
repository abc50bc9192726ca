"""The complexity regulariser: a differentiable cost of the learned strides.

The paper (Riad et al. 2022, Sec. 3.3 and the ImageNet experiments) trades
accuracy for compute by adding to the loss

    lambda * sum_l prod_{j <= l} 1 / (S_h^j * S_w^j)

where l runs over the network's downsampling layers, in order: each term is the
spatial size of the representation after layer l relative to the input. The
gradient of every term in every stride is negative, so gradient descent on the
penalty raises the strides (smaller maps, less compute).

`complexity_penalty(model, form)` computes it:

  * form='paper':   the formula above;
  * form='compute': the terms weighted by the compute of the layers that run at
    that resolution, c_l = sum over convolutions of k_h * k_w * C_in * C_out
    (multiply-accumulates per output position), normalised to mean one over
    the L terms: L * sum_l c_l r_l / sum_l c_l. A network whose stages all
    cost the same gets exactly the paper's value, so lambda means the same
    across models; with channels doubling at every stage (ResNets) the late,
    cheap-per-pixel-but-wide stages count for what they cost;
  * form='memory':  the same with c_l = sum of C_out (activation memory per
    position) of those convolutions.

Which layer runs at which resolution, and which layers open a stage, comes
from walking the network in execution order (`diffstride.stages`, whose
`Stage`, `network_stages`, `is_downsampling`, `downsampling_sizes` and
`conv_macs` are also importable from here). Every `DiffStride` opens a stage
(the penalty is differentiable in its `strides` weight, a shared (1,) stride
counting for both axes), and so does every fixed downsampling layer
(`FixedSpectralPooling`, a strided `Conv2D`, max or average pooling with
strides > 1), so the same numbers describe strided-convolution networks and
place them on the same axis (`complexity_values`).

Backends: `keras.ops` and NumPy only, so the penalty is a tensor of Keras'
backend (TensorFlow, JAX or PyTorch) and its gradient is that backend's:
`tf.GradientTape`; `jax.grad` of a function that reads the strides inside
`keras.StatelessScope(state_mapping=...)` (as Keras' JAX trainer does);
`torch.autograd` through the stride variables' `.value`.

In training (`train.complexity_weight = lambda`), `attach_regularizer` puts a
`ComplexityRegularizer` on one stride variable: Keras adds
`weight * penalty` to `model.losses` at every step like any weight
regulariser, inside the replica context under `tf.distribute`, and the
gradient reaches every stride since the penalty reads them all.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import keras
from keras import ops
import numpy as np

from diffstride import pooling
from diffstride import stages as stages_lib
from diffstride.stages import conv_macs
from diffstride.stages import downsampling_sizes  # pylint: disable=unused-import
from diffstride.stages import is_downsampling  # pylint: disable=unused-import
from diffstride.stages import network_stages
from diffstride.stages import Stage
from diffstride.strides import stride_pair_tensor

FORMS = ('paper', 'compute', 'memory')


def stage_strides(layer):
  """float32[2]: (S_h, S_w) of a downsampling layer, a backend tensor.

  For `DiffStride` the `strides` weight itself (differentiable; a shared
  (1,) stride is used for both axes), else a constant of the layer's fixed
  strides (`stages.layer_strides`).
  """
  if isinstance(layer, pooling.DiffStride):
    return stride_pair_tensor(layer.strides)
  return ops.convert_to_tensor(
      np.asarray(stages_lib.layer_strides(layer), np.float32))


def _stage_costs(stages: Sequence[Stage], form: str) -> Optional[List[float]]:
  if form not in FORMS:
    raise ValueError(f'Unknown complexity form {form!r}: use one of {FORMS}.')
  if form == 'paper':
    return None
  costs = [getattr(stage, form) for stage in stages[1:]]
  if sum(costs) <= 0:
    raise ValueError(
        f"form={form!r} needs convolutions after the downsampling layers; "
        'this network has none. Use the paper form.')
  return costs


def penalty_from_strides(strides: Sequence, costs: Optional[Sequence[float]]
                         = None):
  """sum_l w_l prod_{j<=l} 1 / (S_h^j S_w^j) for float32[2] strides.

  Args:
    strides: L float32[2] tensors (S_h, S_w) of Keras' backend (or anything
      `keras.ops.convert_to_tensor` takes), in execution order.
    costs: None (all w_l = 1: the paper's form), or L non-negative costs,
      normalised here to w_l = L * c_l / sum(c).

  Returns:
    A float32 scalar tensor, differentiable in the strides; 0 for L = 0.
  """
  total = ops.zeros((), 'float32')
  relative_size = ops.ones((), 'float32')
  if costs is not None:
    scale = len(costs) / float(sum(costs))
  for i, s in enumerate(strides):
    s = ops.convert_to_tensor(s, 'float32')
    relative_size = relative_size / (s[0] * s[1])
    weight = 1.0 if costs is None else costs[i] * scale
    total = total + weight * relative_size
  return total


def complexity_penalty(model: keras.layers.Layer,
                       form: str = 'paper',
                       stages: Optional[Sequence[Stage]] = None):
  """The complexity penalty of a built model (float32 scalar, no lambda).

  Args:
    model: a built network (any of this package's ResNets, or a Sequential /
      Functional model of Conv2D and pooling layers).
    form: 'paper', 'compute' or 'memory' (see the module docstring).
    stages: `network_stages(model)`, to avoid walking the network again.

  Returns:
    The penalty, differentiable in every DiffStride `strides` weight; 0 if the
    model has no downsampling layer.
  """
  stages = network_stages(model) if stages is None else stages
  costs = _stage_costs(stages, form)
  return penalty_from_strides([stage_strides(s.layer) for s in stages[1:]],
                              costs)


def complexity_values(model: keras.layers.Layer,
                      input_size: Optional[Tuple[int, int]] = None
                      ) -> Dict[str, object]:
  """Plain-number description of a built model's complexity, for logs.

  Returns:
    {'paper', 'compute', 'memory': the three penalty forms (no lambda),
     'num_downsampling': L, 'strides': [[S_h, S_w] per downsampling layer],
     'conv_mmacs': millions of convolution multiply-accumulates per example
     at the real map sizes (only with `input_size` (H, W))}.
    {} when the model has no downsampling layer.
  """
  stages = network_stages(model)
  if len(stages) < 2:
    return {}
  values = {}
  for form in FORMS:
    try:
      values[form] = float(ops.convert_to_numpy(
          complexity_penalty(model, form, stages)))
    except ValueError:
      values[form] = None
  values['num_downsampling'] = len(stages) - 1
  values['strides'] = [list(stages_lib.layer_strides(s.layer))
                       for s in stages[1:]]
  if input_size is not None:
    values['conv_mmacs'] = conv_macs(model, input_size) / 1e6
  return values


@keras.saving.register_keras_serializable(package='diffstride')
class ComplexityRegularizer(keras.regularizers.Regularizer):
  """`weight * complexity_penalty` as a Keras weight regulariser.

  Put on one stride variable (`attach_regularizer` does it), it ignores that
  variable's value and returns the penalty of the whole network, which reads
  every stride: Keras sums it into `model.losses`, so it is part of the
  training loss and of its gradient.

  Its config holds `weight` and `form` only; the network it reads is set by
  `bind(stages)`. Stride weights do not save their regulariser, so a saved
  model loads without it (inference is unaffected); training re-attaches it.
  """

  def __init__(self, weight: float = 0.0, form: str = 'paper'):
    if form not in FORMS:
      raise ValueError(f'Unknown complexity form {form!r}: use one of '
                       f'{FORMS}.')
    if not np.isfinite(weight) or weight < 0:
      raise ValueError(f'The complexity weight must be >= 0, got {weight!r}.')
    self.weight = float(weight)
    self.form = form
    self._layers = None
    self._costs = None

  def bind(self, stages: Sequence[Stage]) -> 'ComplexityRegularizer':
    self._layers = [stage.layer for stage in stages[1:]]
    self._costs = _stage_costs(stages, self.form)
    return self

  def __call__(self, x):
    del x  # The penalty reads every stride, not only the carrier's.
    if self._layers is None:
      raise ValueError('ComplexityRegularizer is not bound to a network: '
                       'call bind(network_stages(model)).')
    penalty = penalty_from_strides([stage_strides(l) for l in self._layers],
                                   self._costs)
    return self.weight * penalty

  def get_config(self):
    return {'weight': self.weight, 'form': self.form}


def attach_regularizer(model: keras.layers.Layer, weight: float,
                       form: str = 'paper') -> ComplexityRegularizer:
  """Adds `weight * complexity_penalty(model, form)` to the model's losses.

  Call after the model is built (and inside the strategy scope, if any).

  Raises:
    ValueError: if the model has no DiffStride layer with trainable strides.
  """
  stages = network_stages(model)
  carriers = [s.layer for s in stages[1:]
              if isinstance(s.layer, pooling.DiffStride) and
              s.layer.trainable and s.layer.strides.trainable]
  if not carriers:
    raise ValueError(
        'The complexity penalty needs a DiffStride layer with trainable '
        'strides; this model has none (strided convolutions or fixed '
        'pooling have no stride to learn). Set train.complexity_weight = 0.')
  regularizer = ComplexityRegularizer(weight, form).bind(stages)
  carriers[0].strides.regularizer = regularizer
  return regularizer
