"""Residual and bottleneck blocks and block groups (official `nn_blocks.py` / `block_group`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import layers

Array = jax.Array


class _Block(nn.Module):
  """Shared wiring: shortcut, main path, optional DropBlock after every norm, drop-connect, act."""
  filters: int
  strides: int = 1
  use_projection: bool = False
  activation: str = 'swish'
  padding_mode: str = 'fixed'
  norm: layers.NormConfig = layers.NormConfig()
  regularization: layers.Regularization = layers.Regularization()
  dtype: layers.Dtype = jnp.float32

  expansion = 1
  # (kernel size, output-filter multiplier, stride applies, activation) of each main-path conv.
  main_path = ()

  def _conv(self, name, features, kernel, strides, act):
    return layers.ConvNorm(features, kernel, strides, self.activation if act else None,
                           self.padding_mode, self.norm, self.dtype, name=name)

  def _maybe_dropblock(self, x, train):
    reg = self.regularization
    if not reg.dropblock_active(train):
      return x
    return layers.dropblock(x, reg.dropblock_keep_prob, reg.dropblock_size,
                            self.make_rng('dropout'))

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    shortcut = x
    if self.use_projection:
      shortcut = self._conv('projection', self.expansion * self.filters, 1, self.strides, False)(
          x, train)
    shortcut = self._maybe_dropblock(shortcut, train)
    for i, (kernel, mult, strided, act) in enumerate(self.main_path):
      x = self._conv(f'conv_{i}', mult * self.filters, kernel, self.strides if strided else 1, act)(
          x, train)
      x = self._maybe_dropblock(x, train)
    rate = self.regularization.drop_connect_rate
    if train and rate:
      x = layers.drop_connect(x, rate, self.make_rng('dropout'))
    return layers.activation_fn(self.activation)(x + shortcut)


class ResidualBlock(_Block):
  """3x3 -> 3x3 with a (projected) shortcut; outputs `filters` channels."""
  expansion = 1
  main_path = ((3, 1, True, True), (3, 1, False, False))


class BottleneckBlock(_Block):
  """1x1 -> 3x3 (strided) -> 1x1 to 4x filters, with a (projected) shortcut."""
  expansion = 4
  main_path = ((1, 1, False, True), (3, 1, True, True), (1, 4, False, False))


BLOCK_CLASSES = {'bottleneck': BottleneckBlock, 'residual': ResidualBlock}


class BlockGroup(nn.Module):
  """`block_repeats` blocks; only the first may stride or project (official `block_group`)."""
  block_fn: str
  filters: int
  block_repeats: int
  strides: int = 1
  activation: str = 'swish'
  padding_mode: str = 'fixed'
  norm: layers.NormConfig = layers.NormConfig()
  regularization: layers.Regularization = layers.Regularization()
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    cls = BLOCK_CLASSES[self.block_fn]
    in_channels = x.shape[-1]
    use_projection = not (in_channels == cls.expansion * self.filters and self.strides == 1)
    for r in range(self.block_repeats):
      x = cls(self.filters, self.strides if r == 0 else 1, use_projection and r == 0,
              self.activation, self.padding_mode, self.norm, self.regularization, self.dtype,
              name=f'block_{r}')(x, train)
    return x
