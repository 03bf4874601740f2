"""RetinaNet on SpineNet, as the official `RetinanetHead` and `retinanet_model`.

The head has a class tower and a box tower. Each is `num_convs` 3x3 convs with biases, whose weights
are shared across levels while every level has its own norm, followed by a 3x3 prediction conv.
Initializers are the official ones: N(0, 0.01) for the tower convs, N(0, 1e-5) for the predictions,
and a class bias of -log((1 - 0.01) / 0.01). The official code uses 91 class outputs: column 0 is
background, always a negative target, and COCO category ids are used as class indices. Output
channels are anchor * num_classes + class and anchor * 4 + coordinate. The backbone has no FPN: its
endpoints feed the head directly ("identity" multilevel features).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import layers
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig
from spinenet_jax.ops.anchors import AnchorConfig

Array = jax.Array
PRIOR_PROBABILITY = 0.01


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  num_convs: int = 4            # official; 190: 7
  num_filters: int = 256        # official; 49S: 128, 190: 512
  num_classes: int = 91         # background column 0 included, as official
  separable_conv: bool = False
  norm: layers.NormConfig | None = None   # None: the backbone's (official: batch norm)

  def __post_init__(self):
    if self.num_convs < 0 or self.num_filters < 1 or self.num_classes < 2:
      raise ValueError(f'invalid head settings: {self}.')


@dataclasses.dataclass(frozen=True)
class RetinaNetConfig:
  backbone: SpineNetConfig = SpineNetConfig()
  head: HeadConfig = HeadConfig()
  anchors: AnchorConfig = AnchorConfig()

  def __post_init__(self):
    b, a = self.backbone, self.anchors
    if (a.min_level, a.max_level) != (b.min_level, b.max_level):
      raise ValueError(f'anchor levels {a.min_level}..{a.max_level} differ from the backbone '
                       f'endpoints {b.min_level}..{b.max_level}.')

  def to_dict(self) -> dict:
    return {'type': 'retinanet', 'backbone': self.backbone.to_dict(),
            'head': dataclasses.asdict(self.head), 'anchors': dataclasses.asdict(self.anchors)}

  @classmethod
  def from_dict(cls, d: dict) -> 'RetinaNetConfig':
    anchors = dict(d['anchors'])
    anchors['aspect_ratios'] = tuple(anchors['aspect_ratios'])
    head = dict(d['head'])
    if head.get('norm') is not None:
      head['norm'] = layers.NormConfig(**head['norm'])
    return cls(SpineNetConfig.from_dict(d['backbone']), HeadConfig(**head),
               AnchorConfig(**anchors))


class _HeadConv(nn.Module):
  """A 3x3 SAME conv with bias, plain or separable (depthwise 3x3 then pointwise 1x1)."""
  features: int
  separable: bool
  stddev: float
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.normal(self.stddev)
    if self.separable:
      x = nn.Conv(x.shape[-1], (3, 3), padding='SAME', feature_group_count=x.shape[-1],
                  use_bias=False, kernel_init=init, dtype=self.dtype, name='depthwise')(x)
      return nn.Conv(self.features, (1, 1), kernel_init=init, bias_init=self.bias_init,
                     dtype=self.dtype, name='pointwise')(x)
    return nn.Conv(self.features, (3, 3), padding='SAME', kernel_init=init,
                   bias_init=self.bias_init, dtype=self.dtype, name='conv')(x)


class RetinaNetHead(nn.Module):
  """Class and box towers over {level: features}; returns per-level raw outputs."""
  config: HeadConfig
  anchors_per_location: int
  activation: str
  norm: layers.NormConfig
  dtype: Any = jnp.float32

  def _tower(self, name: str, features: dict, outputs: int, bias: float, train: bool) -> dict:
    c = self.config
    convs = [_HeadConv(c.num_filters, c.separable_conv, 0.01, dtype=self.dtype,
                       name=f'{name}_conv_{i}') for i in range(c.num_convs)]
    predict = _HeadConv(outputs, c.separable_conv, 1e-5, nn.initializers.constant(bias),
                        self.dtype, name=f'{name}_predict')
    result = {}
    for level, x in sorted(features.items()):
      for i, conv in enumerate(convs):
        x = layers.Norm(self.norm, self.dtype, name=f'{name}_norm_{i}_level_{level}')(
            conv(x), train, self.activation)
      result[level] = predict(x)
    return result

  @nn.compact
  def __call__(self, features: dict, train: bool = False) -> tuple[dict, dict]:
    a = self.anchors_per_location
    prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    cls = self._tower('class', features, self.config.num_classes * a, prior_bias, train)
    box = self._tower('box', features, 4 * a, 0.0, train)
    return cls, box


class RetinaNet(nn.Module):
  """SpineNet + RetinaNet head: images [B, H, W, 3] -> class logits and box deltas per level."""
  config: RetinaNetConfig = RetinaNetConfig()
  dtype: Any = jnp.float32   # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> dict[str, dict[int, Array]]:
    c = self.config
    features = SpineNet(c.backbone, self.dtype, name='backbone')(images, train)
    cls, box = RetinaNetHead(c.head, c.anchors.anchors_per_location, c.backbone.activation,
                             c.head.norm or c.backbone.norm, self.dtype, name='head')(features, train)
    # Losses and post-processing run in at least float32 (bfloat16 compute is lifted).
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)
    cast = lambda d: {k: v.astype(out_dtype) for k, v in d.items()}  # noqa: E731
    return {'cls_outputs': cast(cls), 'box_outputs': cast(box)}
