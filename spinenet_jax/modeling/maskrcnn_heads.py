"""Mask R-CNN heads as the official `modeling/architecture/heads.py`: `RpnHead`, `FastrcnnHead`,
`MaskrcnnHead` (with batch norm, as every SpineNet Mask R-CNN yaml sets).

- RPN: `num_convs` 3x3 SAME convs with bias, N(0, 0.01), shared across levels, each followed by a
  per-level batch norm + activation; then 1x1 `rpn-class` (A outputs) and `rpn-box` (4A), both
  N(0, 0.01), zero bias. Outputs per level [B, h, w, A] and [B, h, w, 4A] (channel a: anchor a of
  the official (scale, aspect) order; box channel 4a + coordinate).
- Fast R-CNN: `num_convs` 3x3 SAME convs with bias, VarianceScaling(2, fan_out, untruncated
  normal), batch norm + activation each; flattened row-major (H, W, C); `num_fcs` dense layers
  (`fc6`, ...; Glorot-uniform) with batch norm + activation over the [B, N, fc_dims] tensor
  (statistics over B and N, as official); `class-predict` N(0, 0.01) and class-specific
  `box-predict` N(0, 0.001) (4 x num_classes outputs).
- Mask: `num_convs` 3x3 convs (`mask-conv-l{i}`) as the Fast R-CNN ones, a 2x2 stride-2 transposed
  conv `conv5-mask` (TF kernel layout [kh, kw, out, in], no spatial flip:
  out[2i + a, 2j + b, c] = sum_o W[a, b, c, o] x[i, j, o]) with batch norm + activation, and the
  1x1 `mask_fcn_logits` to num_classes channels; the channel of each RoI's class is returned.

Module names follow the official variable names where Flax allows (`rpn_l3_bn` for `rpn-l3-bn`),
so the TF1 name map stays a table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import layers

Array = jax.Array
# TF's VarianceScaling(scale=2, mode='fan_out', distribution='untruncated_normal').
FAN_OUT_NORMAL = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


@dataclasses.dataclass(frozen=True)
class RpnHeadConfig:
  num_convs: int = 1            # official default and the 49S/49/96/143 yamls; 190: 7
  num_filters: int = 256        # 49S: 128, 190: 384


@dataclasses.dataclass(frozen=True)
class FastRcnnHeadConfig:
  num_convs: int = 4            # SpineNet yamls (official default 0)
  num_filters: int = 256        # 49S: 128, 190: 384
  num_fcs: int = 1              # SpineNet yamls (official default 2)
  fc_dims: int = 1024           # 49S: 512


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig:
  num_convs: int = 4
  num_filters: int = 256        # 49S: 128, 190: 384
  mask_target_size: int = 28    # the transposed conv doubles the 14 x 14 RoIAlign crop


def _conv_norm_stack(x: Array, count: int, features: int, name: str, norm: layers.NormConfig,
                     activation: str, dtype: Any, train: bool) -> Array:
  """`count` x (3x3 SAME conv with bias, VarianceScaling(2, fan_out) -> batch norm + activation),
  named `{name}{i}` and `{name}{i}_bn` in the calling module (the Fast R-CNN and mask heads)."""
  for i in range(count):
    x = nn.Conv(features, (3, 3), padding='SAME', kernel_init=FAN_OUT_NORMAL, dtype=dtype,
                name=f'{name}{i}')(x)
    x = layers.Norm(norm, dtype, name=f'{name}{i}_bn')(x, train, activation)
  return x


class RpnHead(nn.Module):
  """Objectness scores and box deltas per level (official `RpnHead`)."""
  config: RpnHeadConfig
  anchors_per_location: int
  activation: str
  norm: layers.NormConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: dict[int, Array], train: bool = False
               ) -> tuple[dict[int, Array], dict[int, Array]]:
    c, a = self.config, self.anchors_per_location
    init = nn.initializers.normal(0.01)
    convs = [nn.Conv(c.num_filters, (3, 3), padding='SAME', kernel_init=init, dtype=self.dtype,
                     name='rpn' if i == 0 else f'rpn_{i}') for i in range(c.num_convs)]
    score = nn.Conv(a, (1, 1), kernel_init=init, dtype=self.dtype, name='rpn_class')
    box = nn.Conv(4 * a, (1, 1), kernel_init=init, dtype=self.dtype, name='rpn_box')
    scores, boxes = {}, {}
    for level, x in sorted(features.items()):
      for i, conv in enumerate(convs):
        suffix = '' if i == 0 else f'_{i}'
        x = layers.Norm(self.norm, self.dtype, name=f'rpn_l{level}_bn{suffix}')(
            conv(x), train, self.activation)
      scores[level], boxes[level] = score(x), box(x)
    return scores, boxes


class FastRcnnHead(nn.Module):
  """Class logits [B, N, num_classes] and class-specific box deltas [B, N, 4 num_classes] of
  RoIAlign features [B, N, S, S, C] (official `FastrcnnHead`)."""
  config: FastRcnnHeadConfig
  num_classes: int
  activation: str
  norm: layers.NormConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: Array, train: bool = False) -> tuple[Array, Array]:
    c = self.config
    b, n, s, _, channels = roi_features.shape
    x = _conv_norm_stack(roi_features.reshape(b * n, s, s, channels), c.num_convs,
                         c.num_filters, 'conv_', self.norm, self.activation, self.dtype, train)
    x = x.reshape(b, n, -1)
    for i in range(c.num_fcs):
      x = nn.Dense(c.fc_dims, dtype=self.dtype, name=f'fc{i + 6}')(x)
      x = layers.Norm(self.norm, self.dtype, name=f'fc{i + 6}_bn')(x, train, self.activation)
    classes = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                       dtype=self.dtype, name='class_predict')(x)
    boxes = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001),
                     dtype=self.dtype, name='box_predict')(x)
    return classes, boxes


class MaskHead(nn.Module):
  """Mask logits [B, N, 28, 28] of RoIAlign features [B, N, 14, 14, C] for each RoI's class
  `classes` [B, N] int (official `MaskrcnnHead`, class-specific)."""
  config: MaskHeadConfig
  num_classes: int
  activation: str
  norm: layers.NormConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: Array, classes: Array | None, train: bool = False) -> Array:
    """classes None: the logits of every class, [B, N, 28, 28, num_classes] (feature dumps)."""
    c = self.config
    b, n, s, _, channels = roi_features.shape
    x = _conv_norm_stack(roi_features.reshape(b * n, s, s, channels), c.num_convs,
                         c.num_filters, 'mask_conv_l', self.norm, self.activation, self.dtype,
                         train)
    # transpose_kernel=True takes TF's conv2d_transpose kernel [kh, kw, out, in] as stored.
    x = nn.ConvTranspose(c.num_filters, (2, 2), strides=(2, 2), padding='VALID',
                         transpose_kernel=True, kernel_init=FAN_OUT_NORMAL, dtype=self.dtype,
                         name='conv5_mask')(x)
    x = layers.Norm(self.norm, self.dtype, name='conv5_mask_bn')(x, train, self.activation)
    logits = nn.Conv(self.num_classes, (1, 1), kernel_init=FAN_OUT_NORMAL, dtype=self.dtype,
                     name='mask_fcn_logits')(x)
    size = logits.shape[1]
    logits = logits.reshape(b, n, size, size, self.num_classes)
    if classes is None:
      return logits
    index = jnp.broadcast_to(classes.astype(jnp.int32)[:, :, None, None, None],
                             (b, n, size, size, 1))
    return jnp.take_along_axis(logits, index, axis=-1)[..., 0]
