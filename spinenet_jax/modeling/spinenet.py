"""The SpineNet backbone (Du et al., 2020) as a Flax Linen module, faithful to the official TPU code.

    model = SpineNet(SpineNetConfig.from_model_id('49'))
    variables = model.init(jax.random.key(0), images)          # images: [B, H, W, 3]
    endpoints = model.apply(variables, images)                 # {3: [B, H/8, W/8, 256], ..., 7: ...}

Parameter names are structural (`stem`, `stem_group_0/block_0/conv_1`, `block_12/resample_0/reduce`,
`block_12/group/block_0/conv_2`, `endpoint_3`, ...); `spinenet_jax.interop` maps them to the official
TF1 and TF Model Garden variable names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.modeling import blocks
from spinenet_jax.modeling import layers
from spinenet_jax.modeling import topology

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SpineNetConfig:
  """Everything that defines a SpineNet. Defaults are the official `SpineNet` class's (swish)."""
  block_specs: tuple[bs.BlockSpec, ...] = bs.OFFICIAL_BLOCK_SPECS
  min_level: int = 3
  max_level: int = 7
  endpoints_num_filters: int = 256
  filter_size_scale: float = 1.0
  resample_alpha: float = 0.5
  block_repeats: int = 1
  activation: str = 'swish'
  conv_padding: str = 'fixed'          # 'fixed': official TPU code; 'same': TF Model Garden
  resample_pooling: str = 'official'   # 'official' or 'model_garden' (see topology.py)
  use_native_resize_op: bool = False
  norm: layers.NormConfig = layers.NormConfig()
  init_drop_connect_rate: float | None = None
  dropblock_keep_prob: float | None = None
  dropblock_size: int | None = None

  def __post_init__(self):
    object.__setattr__(self, 'block_specs', bs.build_block_specs(self.block_specs))
    bs.validate_block_specs(self.block_specs, self.min_level, self.max_level)
    layers.activation_fn(self.activation)
    layers.conv_padding(self.conv_padding, 3, 2)
    if self.resample_pooling not in topology.RESAMPLE_POOLINGS:
      raise ValueError(f'resample_pooling must be one of {topology.RESAMPLE_POOLINGS}, got '
                       f'{self.resample_pooling!r}.')
    if self.block_repeats < 1:
      raise ValueError(f'block_repeats must be >= 1, got {self.block_repeats}.')
    if self.filter_size_scale <= 0 or self.resample_alpha <= 0 or self.endpoints_num_filters < 1:
      raise ValueError('filter_size_scale, resample_alpha and endpoints_num_filters must be positive.')
    if self.init_drop_connect_rate is not None and not 0 <= self.init_drop_connect_rate < 1:
      raise ValueError(f'init_drop_connect_rate must be in [0, 1), got {self.init_drop_connect_rate}.')
    if (self.dropblock_keep_prob is None) != (self.dropblock_size is None):
      raise ValueError('dropblock_keep_prob and dropblock_size must be set together.')
    if self.dropblock_keep_prob is not None and not 0 < self.dropblock_keep_prob <= 1:
      raise ValueError(f'dropblock_keep_prob must be in (0, 1], got {self.dropblock_keep_prob}.')

  @classmethod
  def from_model_id(cls, model_id: str, **overrides: Any) -> 'SpineNetConfig':
    """The scaling of `model_id` (49S, 49, 96, 143, 143L, 190), with any field overridden.

    `endpoints_num_filters=256` with 49S gives the variant of the released 49S checkpoints.
    """
    scaling = bs.scaling_for(model_id)
    fields = dict(endpoints_num_filters=scaling.endpoints_num_filters,
                  filter_size_scale=scaling.filter_size_scale,
                  resample_alpha=scaling.resample_alpha, block_repeats=scaling.block_repeats)
    fields.update({k: v for k, v in overrides.items() if v is not None or k not in fields})
    return cls(**fields)

  def to_dict(self) -> dict:
    """A JSON-serializable description (the inverse of `from_dict`)."""
    d = dataclasses.asdict(self)
    d['block_specs'] = [[b.level, b.block_fn, list(b.input_offsets), b.is_output]
                        for b in self.block_specs]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'SpineNetConfig':
    d = dict(d)
    if 'norm' in d:
      d['norm'] = layers.NormConfig(**d['norm'])
    if d.get('block_specs') is not None:
      d['block_specs'] = bs.build_block_specs(d['block_specs'])
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'Unknown SpineNet settings: {sorted(unknown)}.')
    return cls(**{k: v for k, v in d.items() if v is not None or k.startswith(('init_', 'dropblock'))})

  def plan(self, input_shape: tuple[int, int]) -> topology.NetworkPlan:
    """The static resampling plan at an (height, width) input."""
    return topology.plan_network(self.block_specs, input_shape, self.filter_size_scale,
                                 self.resample_alpha, self.min_level, self.max_level,
                                 self.use_native_resize_op, self.init_drop_connect_rate,
                                 self.resample_pooling)


class Resample(nn.Module):
  """Brings a parent feature to a block's resolution and channels (official `resample_with_alpha`)."""
  plan: topology.ResamplePlan
  activation: str
  padding_mode: str
  norm: layers.NormConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    p = self.plan
    conv = lambda name, f, k, s, act: layers.ConvNorm(  # noqa: E731
        f, k, s, self.activation if act else None, self.padding_mode, self.norm, self.dtype,
        name=name)
    x = conv('reduce', p.reduced_filters, 1, 1, True)(x, train)
    if p.downsample_conv:
      x = conv('downsample', p.reduced_filters, 3, 2, True)(x, train)
    for size, stride in p.max_pools:
      x = layers.max_pool_same(x, size, stride)
    if p.upsample_scale:
      x = layers.nearest_upsample(x, p.upsample_scale)
    if p.resize_to:
      x = layers.legacy_nearest_resize(x, p.resize_to)
    return conv('expand', p.out_filters, 1, 1, False)(x, train)


class ScalePermutedBlock(nn.Module):
  """Resamples two parents, adds them (and merged raw features), activates, runs the block group."""
  plan: topology.BlockPlan
  config: SpineNetConfig
  regularization: layers.Regularization
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[Array], train: bool) -> Array:
    c, b = self.config, self.plan
    target = None
    for p, parent in enumerate(b.parents):
      y = Resample(parent, c.activation, c.conv_padding, c.norm, self.dtype,
                   name=f'resample_{p}')(feats[parent.parent], train)
      target = y if target is None else target + y
    for j in b.merged_features:
      target = target + feats[j]
    target = layers.activation_fn(c.activation)(target)
    return blocks.BlockGroup(b.spec.block_fn, b.filters, c.block_repeats, 1, c.activation,
                             c.conv_padding, c.norm, self.regularization, self.dtype,
                             name='group')(target, train)


class SpineNet(nn.Module):
  """SpineNet: returns {level: [B, ceil(H / 2^level), ceil(W / 2^level), endpoints_num_filters]}."""
  config: SpineNetConfig = SpineNetConfig()
  dtype: Any = jnp.float32   # compute dtype; parameters stay float32

  def _group(self, block_fn, filters, name):
    c = self.config
    return blocks.BlockGroup(block_fn, filters, c.block_repeats, 1, c.activation, c.conv_padding,
                             c.norm, layers.Regularization(), self.dtype, name=name)

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> dict[int, Array]:
    c = self.config
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'SpineNet expects NHWC images with 3 channels, got shape {images.shape}.')
    plan = c.plan(images.shape[1:3])
    x = images.astype(self.dtype)

    x = layers.ConvNorm(bs.STEM_CONV_FILTERS, 7, 2, c.activation, c.conv_padding, c.norm,
                        self.dtype, name='stem')(x, train)
    x = layers.max_pool_same(x, 3, 2)
    feats = []
    for g in range(bs.NUM_STEM_FEATURES):
      x = self._group(bs.STEM_BLOCK_FN, bs.block_filters(2, c.filter_size_scale),
                      f'stem_group_{g}')(x, train)
      feats.append(x)

    outputs = {}
    for block in plan.blocks:
      reg = layers.Regularization(block.drop_connect_rate, c.dropblock_keep_prob, c.dropblock_size)
      y = ScalePermutedBlock(block, c, reg, self.dtype, name=f'block_{block.index}')(feats, train)
      feats.append(y)
      if block.spec.is_output:
        outputs[block.spec.level] = y

    return {
        level: layers.ConvNorm(c.endpoints_num_filters, 1, 1, c.activation, c.conv_padding, c.norm,
                               self.dtype, name=f'endpoint_{level}')(outputs[level], train)
        for level in range(c.min_level, c.max_level + 1)
    }


def endpoint_shapes(config: SpineNetConfig, input_shape: Sequence[int]) -> dict[int, tuple]:
  return topology.endpoint_shapes(config.plan(tuple(input_shape)), config.min_level,
                                  config.max_level, config.endpoints_num_filters)
