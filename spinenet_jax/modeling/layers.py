"""Building layers shared by the SpineNet backbone and the heads.

Conventions follow the official TPU code (`nn_ops.py`): convolutions have no bias, stride-2 convs pad
explicitly by the kernel size ("fixed", independent of the input size) unless `conv_padding='same'`
(Keras SAME, as TF Model Garden builds SpineNet), batch norm is followed by an optional activation.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

CONV_PADDINGS = ('fixed', 'same')
ACTIVATIONS = ('relu', 'swish')

# TF1 `tf.variance_scaling_initializer()`: scale 1, fan_in, truncated normal.
conv_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def activation_fn(name: str) -> Callable[[Array], Array]:
  if name == 'relu':
    return nn.relu
  if name == 'swish':
    return nn.swish  # x * sigmoid(x), as tf.nn.swish
  raise ValueError(f'activation must be one of {ACTIVATIONS}, got {name!r}.')


def conv_padding(mode: str, kernel_size: int, strides: int):
  """Padding for a conv: 'fixed' pads stride>1 convs by (k-1)//2 before and the rest after."""
  if mode not in CONV_PADDINGS:
    raise ValueError(f'conv_padding must be one of {CONV_PADDINGS}, got {mode!r}.')
  if mode == 'same' or strides == 1:
    return 'SAME'
  pad_beg = (kernel_size - 1) // 2
  pad_end = kernel_size - 1 - pad_beg
  return ((pad_beg, pad_end), (pad_beg, pad_end))


NORM_TYPES = ('batch', 'group', 'evonorm_s0')


@dataclasses.dataclass(frozen=True)
class NormConfig:
  """Normalization settings. Official RetinaNet: batch norm, momentum 0.997, epsilon 1e-4.

  'group' (GroupNorm) and 'evonorm_s0' (Liu et al. 2020) use `groups` groups, or the largest divisor
  of the channel count not above it (49S has 41- and 83-channel layers); they keep no statistics.
  """
  type: str = 'batch'
  momentum: float = 0.997
  epsilon: float = 1e-4
  groups: int = 32

  def __post_init__(self):
    if self.type not in NORM_TYPES:
      raise ValueError(f'norm type must be one of {NORM_TYPES}, got {self.type!r}.')


def num_groups(channels: int, groups: int) -> int:
  return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


class EvoNormS0(nn.Module):
  """EvoNorm-S0: x * sigmoid(v x) / group_std(x) * gamma + beta; without the nonlinearity when
  it replaces a norm that has no activation after it."""
  groups: int
  epsilon: float
  nonlinearity: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    g = num_groups(c, self.groups)
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], g, c // g)
    var = jnp.var(xf, axis=(1, 2, 4), keepdims=True)
    std = jnp.sqrt(var + self.epsilon)
    num = xf
    if self.nonlinearity:
      v = self.param('v', nn.initializers.ones, (c,)).reshape(g, c // g)
      num = xf * jax.nn.sigmoid(v * xf)
    y = (num / std).reshape(x.shape)
    y = y * self.param('scale', nn.initializers.ones, (c,)) + self.param('bias', nn.initializers.zeros, (c,))
    return y.astype(self.dtype)


_BATCH_NORM_AXIS: contextvars.ContextVar[str | tuple[str, ...] | None] = contextvars.ContextVar(
    'batch_norm_axis', default=None)


@contextlib.contextmanager
def batch_norm_axis(name: str | tuple[str, ...] | None) -> Iterator[None]:
  """Batch norm traced inside this context averages its statistics over the vmapped (or mapped)
  axis `name` as well: one global batch split into replica groups keeps global statistics (the
  official sync BN). Read at trace time."""
  token = _BATCH_NORM_AXIS.set(name)
  try:
    yield
  finally:
    _BATCH_NORM_AXIS.reset(token)


class Norm(nn.Module):
  """Normalization followed by an optional activation.

  Batch norm statistics cover the whole (global) batch: under `jax.jit` with the batch sharded over
  a device mesh, the means are global reductions that XLA turns into all-reduces, so sharded and
  unsharded runs compute the same statistics.
  """
  config: NormConfig = NormConfig()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, activation: str | None = None) -> Array:
    c = self.config
    if c.type == 'evonorm_s0':
      return EvoNormS0(c.groups, c.epsilon, activation is not None, self.dtype, name='evonorm')(x)
    if c.type == 'group':
      x = nn.GroupNorm(num_groups=num_groups(x.shape[-1], c.groups), epsilon=c.epsilon,
                       dtype=self.dtype, name='gn')(x)
    else:
      x = nn.BatchNorm(
          use_running_average=not train,
          momentum=c.momentum,
          epsilon=c.epsilon,
          dtype=self.dtype,
          use_fast_variance=False,  # E[(x - mean)^2]: no cancellation on large activations
          axis_name=_BATCH_NORM_AXIS.get(),
          name='bn')(x)
    return activation_fn(activation)(x) if activation else x


class ConvNorm(nn.Module):
  """Conv (no bias) -> norm -> optional activation: the unit every SpineNet layer is made of."""
  features: int
  kernel_size: int
  strides: int = 1
  activation: str | None = None
  padding_mode: str = 'fixed'
  norm: NormConfig = NormConfig()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), strides=(self.strides, self.strides),
                padding=conv_padding(self.padding_mode, k, self.strides), use_bias=False,
                kernel_init=conv_kernel_init, dtype=self.dtype, name='conv')(x)
    return Norm(self.norm, dtype=self.dtype, name='norm')(x, train, self.activation)


def drop_connect(x: Array, rate: float, rng: Array) -> Array:
  """Official stochastic depth: each sample kept with probability keep = 1 - rate (then x / keep)
  or zeroed whole, i.e. dropout with one draw per sample (`nn.Dropout` broadcast over all axes
  but the batch). The official floor(keep + U[0, 1)) mask is a Bernoulli(keep) draw too."""
  dropout = nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=False,
                       parent=None)  # a standalone module, applied as a function of `rng`
  return dropout.apply({}, x, rng=rng)


def dropblock(x: Array, keep_prob: float, block_size: int, rng: Array) -> Array:
  """DropBlock with the official `nn_ops.Dropblock` formula (NHWC).

  Two generalizations, identical to the official op wherever it is defined: each axis uses its own
  size for the valid-seed bounds (the official op handles square maps only), and the seed rate's
  denominator uses the block clipped to the map (the official one divides by zero or turns negative
  on maps smaller than the block, e.g. level 7 at small inputs).
  """
  _, height, width, _ = x.shape
  size = min(block_size, height, width)
  seed_drop_rate = ((1.0 - keep_prob) * height * width / size**2 /
                    ((height - size + 1) * (width - size + 1)))
  rows = np.arange(height)[:, None]
  cols = np.arange(width)[None, :]
  valid = ((rows >= size // 2) & (rows < height - (size - 1) // 2) &
           (cols >= size // 2) & (cols < width - (size - 1) // 2))
  valid = jnp.asarray(valid, jnp.float32)[None, :, :, None]
  noise = jax.random.uniform(rng, x.shape, dtype=jnp.float32)
  pattern = ((1.0 - valid + (1.0 - seed_drop_rate) + noise) >= 1).astype(jnp.float32)
  if size == min(height, width):
    pattern = jnp.min(pattern, axis=(1, 2), keepdims=True)
  else:
    pattern = -nn.max_pool(-pattern, (block_size, block_size), strides=(1, 1), padding='SAME')
  percent_ones = jnp.sum(pattern) / pattern.size
  return x / percent_ones.astype(x.dtype) * pattern.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Regularization:
  """Stochastic regularizers inside residual blocks (both off by default, as official SpineNet)."""
  drop_connect_rate: float | None = None
  dropblock_keep_prob: float | None = None
  dropblock_size: int | None = None

  def dropblock_active(self, train: bool) -> bool:
    return (train and self.dropblock_keep_prob is not None and self.dropblock_keep_prob < 1.0
            and self.dropblock_size is not None)


def nearest_upsample(x: Array, scale: int) -> Array:
  """Repeats each pixel scale x scale (the official stack/reshape `nearest_upsampling`)."""
  return jnp.repeat(jnp.repeat(x, scale, axis=1), scale, axis=2)


def legacy_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of TF1 `resize_nearest_neighbor` (align_corners=False, no half-pixel centres).

  The kernel computes floor(float32(dst) * float32(in / out)) in float32 arithmetic, clamped to
  in - 1; float32 is reproduced here because exact rational arithmetic differs at some sizes.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def legacy_nearest_resize(x: Array, size: tuple[int, int]) -> Array:
  """TF1 legacy nearest-neighbour resize of an NHWC array to (height, width)."""
  rows = legacy_nearest_indices(x.shape[1], size[0])
  cols = legacy_nearest_indices(x.shape[2], size[1])
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def max_pool_same(x: Array, size: int, stride: int) -> Array:
  """TF SAME max pool: pads with -inf, the extra pad at the end."""
  return nn.max_pool(x, (size, size), strides=(stride, stride), padding='SAME')
