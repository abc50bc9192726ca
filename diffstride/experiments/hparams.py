"""Every hyperparameter rule of the experiments, in one place.

Learning-rate schedules, the optimizer, and the ResNet-18 strides of the
paper's stride initialisations (`resnet18_strides`). All are gin-configurable
functions; the gin files under `gin/` only bind their arguments.
"""

from typing import Optional, Sequence

import gin
import keras


@gin.configurable
def resnet18_strides(init: Sequence[float] = (2, 2, 2),
                     stem: float = 1) -> list:
  """ResNet-18 strides [stem, block 1, block 2, block 3, block 4].

  Block 1 is identity-only, so `init` sets the three downsampling stages
  (blocks 2-4) the paper varies. Bind `resnet18_strides.init = (3, 2, 3)`
  (or the `STRIDE_INIT` macro of the gin files) to pick an initialisation.
  """
  init = tuple(init)
  if len(init) != 3:
    raise ValueError(f'`init` needs 3 strides (one per downsampling stage), '
                     f'got {init!r}.')
  return [stem, 1] + list(init)


@keras.saving.register_keras_serializable(package='diffstride')
class PiecewiseConstantEpochs(keras.optimizers.schedules.LearningRateSchedule):
  """Learning rate `values[i]` from epoch `boundaries[i-1]` to `boundaries[i]`.

  Boundaries are in epochs and converted to steps with `steps_per_epoch`,
  which the training loop fills in. Default: the official README recipe as we
  read it: 0.01 for 5 warm-up epochs, 0.1 to epoch 200, 0.01 to 300, then
  0.001.
  """

  def __init__(self,
               boundaries: Sequence[float] = (5, 200, 300),
               values: Sequence[float] = (0.01, 0.1, 0.01, 0.001),
               steps_per_epoch: int = 1):
    if len(values) != len(boundaries) + 1:
      raise ValueError(f'`values` needs one more entry than `boundaries`, got '
                       f'{len(values)} values and {len(boundaries)} '
                       'boundaries.')
    self.boundaries = [float(b) for b in boundaries]
    self.values = [float(v) for v in values]
    self.steps_per_epoch = int(steps_per_epoch)
    self._schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(round(b * self.steps_per_epoch)) for b in self.boundaries],
        self.values)

  def __call__(self, step):
    return self._schedule(step)

  def get_config(self):
    return {'boundaries': self.boundaries, 'values': self.values,
            'steps_per_epoch': self.steps_per_epoch}


@gin.configurable
def learning_rate(steps_per_epoch: int,
                  schedule: str = 'piecewise',
                  base: float = 0.1,
                  boundaries: Sequence[float] = (5, 200, 300),
                  values: Optional[Sequence[float]] = (0.01, 0.1, 0.01, 0.001),
                  total_epochs: Optional[int] = None):
  """The learning rate (a float or a schedule) for `steps_per_epoch` steps.

  schedule: 'piecewise' (boundaries in epochs with `values`), 'cosine'
    (from `base` to 0 over `total_epochs`), or 'constant' (`base`).
  """
  if schedule == 'constant':
    return float(base)
  if schedule == 'piecewise':
    return PiecewiseConstantEpochs(boundaries, values, steps_per_epoch)
  if schedule == 'cosine':
    if not total_epochs:
      raise ValueError("schedule='cosine' needs `total_epochs`.")
    return keras.optimizers.schedules.CosineDecay(
        float(base), decay_steps=int(total_epochs * steps_per_epoch))
  raise ValueError(f"Unknown `schedule` {schedule!r}: use 'piecewise', "
                   "'cosine' or 'constant'.")


@gin.configurable
def optimizer(lr, name: str = 'sgd', momentum: float = 0.9,
              nesterov: bool = False, clipnorm: Optional[float] = None):
  """The optimizer: 'sgd' (with momentum) or 'adam'.

  Weight decay is applied as L2 kernel regularisation inside the models
  (`Resnet.weight_decay`), as in the official code.
  """
  if name == 'sgd':
    return keras.optimizers.SGD(learning_rate=lr, momentum=momentum,
                                nesterov=nesterov, clipnorm=clipnorm)
  if name == 'adam':
    return keras.optimizers.Adam(learning_rate=lr, clipnorm=clipnorm)
  raise ValueError(f"Unknown optimizer `name` {name!r}: use 'sgd' or 'adam'.")
