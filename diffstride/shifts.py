"""Shifted copies of a batch and top-1 agreement: the maths of shift
consistency (Zhang, "Making Convolutional Networks Shift-Invariant Again",
ICML 2019), in `keras.ops` (any Keras backend) and NumPy.

Every example of a batch gets its own integer offset per shifted axis
(`random_offsets`: uniform in [-max_shift, max_shift], from a NumPy
generator, so a seed fixes them). A positive offset moves the content
towards larger indices (down / right / later), as `np.roll` does. Two forms:

  * 'circular': `np.roll` of the content; what leaves one side re-enters on
    the other.
  * 'crop_pad': the content moves, what leaves is dropped, and the uncovered
    border is filled with `fill_value` (0.0: in the harness's normalised
    input space, the train set's mean colour for images, silence for
    waveforms). The size is kept.

Images are [B, H, W, C] (channels last; offsets [B, 2] = (dh, dw)).
Waveforms are [B, T] or [B, T, 1] (offsets [B]); their shift acts on each
clip's own length (`signal_lengths`: up to its last non-zero sample), so that
the zero padding a batch of unequal clips ends with stays where it is (an
all-zero window is still ignored by `AudioClassifier`'s average).
"""

from typing import Optional

import keras
from keras import ops
import numpy as np

FORMS = ('circular', 'crop_pad')


def random_offsets(rng: np.random.Generator, batch: int, max_shift: int,
                   axes: int = 2) -> np.ndarray:
  """int32 [batch, axes] offsets, uniform on the integers of [-max_shift,
  max_shift], independent per example and axis."""
  if int(max_shift) < 0:
    raise ValueError(f'max_shift must be >= 0, got {max_shift}.')
  return rng.integers(-int(max_shift), int(max_shift) + 1,
                      size=(int(batch), int(axes))).astype('int32')


def _check_form(form: str):
  if form not in FORMS:
    raise ValueError(f'Unknown shift form {form!r}; expected one of {FORMS}.')


def _shift_axis(x, offsets, axis: int, form: str, lengths=None,
                fill_value: float = 0.0):
  """Shifts `x` along `axis` by per-example `offsets` [B].

  With `lengths` [B], only positions < length take part (the rest is left
  as it is); without, the whole axis.
  """
  size = ops.shape(x)[axis]
  positions = ops.arange(size, dtype='int32')[None, :]  # [1, N]
  offsets = ops.cast(ops.reshape(offsets, (-1, 1)), 'int32')  # [B, 1]
  if lengths is None:
    lengths = ops.full_like(offsets, size)
  else:
    lengths = ops.cast(ops.reshape(lengths, (-1, 1)), 'int32')
  lengths = ops.maximum(lengths, 1)
  inside = ops.less(positions, lengths)  # [B, N]
  source = positions - offsets
  if form == 'circular':
    source = ops.mod(source, lengths)
    covered = inside
  else:
    covered = ops.logical_and(
        inside, ops.logical_and(ops.greater_equal(source, 0),
                                ops.less(source, lengths)))
  # Positions outside the clip keep their own value.
  source = ops.where(covered, source, positions)
  moved = _gather_along(x, source, axis)
  if form == 'circular':
    return moved
  # [B, N] -> [B, 1, .., N, .., 1]: broadcast over the other axes.
  shape = [1] * len(x.shape)
  shape[0], shape[axis] = -1, ops.shape(x)[axis]
  uncovered = ops.reshape(
      ops.logical_and(inside, ops.logical_not(covered)), shape)
  return ops.where(uncovered, ops.cast(fill_value, x.dtype), moved)


def _gather_along(x, source, axis: int):
  """out[b, .., n, ..] = x[b, .., source[b, n], ..] for int32 `source`
  [B, N]: one gather of int32 flat indices (Keras' `take_along_axis` makes
  them int64 on TensorFlow, which oneDNN reports as an error on every call)."""
  moved = ops.moveaxis(x, axis, 1)  # [B, N, ...]
  size = ops.shape(moved)[1]
  rest = tuple(moved.shape[2:])
  rows = ops.arange(ops.shape(moved)[0], dtype='int32')[:, None] * size
  flat = ops.reshape(rows + source, (-1,))
  out = ops.take(ops.reshape(moved, (-1,) + rest), flat, axis=0)
  return ops.moveaxis(ops.reshape(out, (-1, size) + rest), 1, axis)


def shift_images(images, offsets, form: str = 'circular',
                 fill_value: float = 0.0):
  """[B, H, W, C] images, each shifted by its (dh, dw) = offsets[b].

  'circular' equals `np.roll(images[b], offsets[b], axis=(0, 1))` per
  example; 'crop_pad' moves the content the same way, drops what leaves and
  fills the uncovered rows and columns with `fill_value`.
  """
  _check_form(form)
  images = ops.convert_to_tensor(images)
  if len(images.shape) != 4:
    raise ValueError(f'shift_images takes [B, H, W, C] images, got shape '
                     f'{tuple(images.shape)}.')
  offsets = ops.convert_to_tensor(offsets, 'int32')
  out = _shift_axis(images, offsets[:, 0], 1, form, fill_value=fill_value)
  return _shift_axis(out, offsets[:, 1], 2, form, fill_value=fill_value)


def signal_lengths(waveforms):
  """int32 [B]: per clip, 1 + the index of its last non-zero sample (0 for an
  all-zero clip). Waveforms [B, T] or [B, T, 1]."""
  x = ops.convert_to_tensor(waveforms)
  nonzero = ops.not_equal(x, 0)
  if len(x.shape) == 3:
    nonzero = ops.any(nonzero, axis=-1)
  positions = ops.arange(1, ops.shape(x)[1] + 1, dtype='int32')[None, :]
  return ops.max(ops.where(nonzero, positions, 0), axis=1)


def shift_waveforms(waveforms, offsets, form: str = 'circular',
                    lengths=None, fill_value: float = 0.0):
  """[B, T] or [B, T, 1] waveforms, each shifted in time by offsets[b]
  samples within its first `lengths[b]` samples (default:
  `signal_lengths(waveforms)`; the samples after stay as they are).

  'circular' rolls each clip's [0, length) part; 'crop_pad' moves it, drops
  what leaves it and fills the gap with `fill_value`.
  """
  _check_form(form)
  x = ops.convert_to_tensor(waveforms)
  if len(x.shape) not in (2, 3):
    raise ValueError(f'shift_waveforms takes [B, T] or [B, T, 1] waveforms, '
                     f'got shape {tuple(x.shape)}.')
  if lengths is None:
    lengths = signal_lengths(x)
  offsets = ops.reshape(ops.convert_to_tensor(offsets, 'int32'), (-1,))
  return _shift_axis(x, offsets, 1, form, lengths=lengths,
                     fill_value=fill_value)


def shift_inputs(inputs, offsets, form: str = 'circular'):
  """`shift_images` for rank-4 inputs, `shift_waveforms` for rank 2 or 3
  (offsets[:, 0])."""
  if len(inputs.shape) == 4:
    return shift_images(inputs, offsets, form)
  offsets = np.asarray(offsets)
  return shift_waveforms(inputs, offsets[:, 0] if offsets.ndim == 2
                         else offsets, form)


def shifted_axes(inputs) -> int:
  """How many axes `shift_inputs` shifts: 2 for images, 1 for waveforms."""
  return 2 if len(inputs.shape) == 4 else 1


def top1_agreement(logits_a, logits_b) -> np.ndarray:
  """bool [B]: whether the two logits [B, K] have the same argmax (ties: the
  first index, as `np.argmax`)."""
  a = np.argmax(np.asarray(keras.ops.convert_to_numpy(logits_a)), axis=-1)
  b = np.argmax(np.asarray(keras.ops.convert_to_numpy(logits_b)), axis=-1)
  return a == b


def default_max_shift(input_shape, sample_rate: Optional[float] = None
                      ) -> int:
  """The harness's default largest shift for inputs of `input_shape` (one
  example's): images (H, W, C): min(H, W) // 8 pixels, at least 1 (4 for
  32 x 32, 28 for 224 x 224); waveforms (T,): 10 ms (`sample_rate` Hz,
  default 16 kHz: 160 samples)."""
  if len(input_shape) == 3:
    return max(1, min(int(input_shape[0]), int(input_shape[1])) // 8)
  return max(1, int(round((sample_rate or 16000) / 100)))
