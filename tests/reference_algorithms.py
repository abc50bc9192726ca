"""Plain NumPy references of the downsampling methods' published algorithms.

Written from the papers and reference code's algorithms, independently of
the package's `keras.ops` code, to check its numbers on every backend:

  * `blurpool`: adobe/antialiased-cnns' BlurPool (pad floor((f-1)/2) before
    and ceil((f-1)/2) after, binomial filter, stride from index 0);
  * `aps`: adaptive polyphase sampling (largest-l2 polyphase component, ties
    to the first in row-major order), after circular padding to whole
    multiples of the stride;
  * `dct_diffstride`: DCT-DiffStride with `scipy.fft.dctn` / `idctn`
    (orthonormal), the soft box mask from frequency 0 and the crop to its
    support.

Inputs are channels_last [B, H, W, C], float64 in, float64 out.
"""

import math

import numpy as np
import scipy.fft

_NUMPY_PAD = {'reflect': 'reflect', 'zero': 'constant', 'circular': 'wrap'}


def binomial(filter_size):
  a = np.array([math.comb(filter_size - 1, k) for k in range(filter_size)],
               np.float64)
  return np.outer(a, a) / np.outer(a, a).sum()


def blurpool(x, filter_size, strides, padding):
  x = np.asarray(x, np.float64)
  before, after = (filter_size - 1) // 2, int(np.ceil((filter_size - 1) / 2))
  padded = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)),
                  mode=_NUMPY_PAD[padding])
  f = binomial(filter_size)
  s_h, s_w = strides
  out_h = (padded.shape[1] - filter_size) // s_h + 1
  out_w = (padded.shape[2] - filter_size) // s_w + 1
  y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      window = padded[:, i * s_h:i * s_h + filter_size,
                      j * s_w:j * s_w + filter_size, :]
      y[:, i, j, :] = np.einsum('bhwc,hw->bc', window, f)
  return y


def aps(x, strides):
  """(output, chosen component index per example)."""
  x = np.asarray(x, np.float64)
  s_h, s_w = strides
  x = np.pad(x, ((0, 0), (0, -x.shape[1] % s_h), (0, -x.shape[2] % s_w),
                 (0, 0)), mode='wrap')
  components = [x[:, i::s_h, j::s_w, :] for i in range(s_h)
                for j in range(s_w)]
  norms = np.stack([np.sum(c**2, axis=(1, 2, 3)) for c in components], 1)
  index = np.argmax(norms, axis=1)  # The first of equal maxima.
  return np.stack([components[k][b] for b, k in enumerate(index)]), index


def dct_diffstride(x, strides, smoothness=4.0):
  """DCT-DiffStride: per spatial axis of N samples at stride S (raised to
  N / (N - R)), the mask clip((R + t - n) / R, 0, 1) over DCT bins n, with
  t = max(N / S, 2), the bins where it is > 0 kept, inverted at that size."""
  spectrum = scipy.fft.dctn(np.asarray(x, np.float64), axes=(1, 2),
                            norm='ortho')
  for axis, stride in zip((1, 2), strides):
    size = x.shape[axis]
    stride = max(stride, size / (size - smoothness))
    t = max(size / stride, 2.0)
    mask = np.clip((smoothness + t - np.arange(size)) / smoothness, 0.0, 1.0)
    kept = int(np.sum(mask > 0))
    shape = [1] * 4
    shape[axis] = size
    spectrum = np.take(spectrum * mask.reshape(shape), np.arange(kept),
                       axis=axis)
  return scipy.fft.idctn(spectrum, axes=(1, 2), norm='ortho')
