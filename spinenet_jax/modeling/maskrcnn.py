"""Mask R-CNN on SpineNet, as the official `modeling/maskrcnn_model.py` with the SpineNet Mask R-CNN
yamls: the backbone's endpoints (levels 3-7, "identity" multilevel features) feed the RPN; RoIAlign
crops (7 x 7 for boxes, 14 x 14 for masks; `ops/roi_align.py`) feed the Fast R-CNN and mask heads
(`maskrcnn_heads.py`). The heads use the backbone's batch norm (the yamls: momentum 0.99, epsilon
1e-3) and activation.

The module exposes the stages the detector strings together with the ops between them (proposals,
RoI sampling, targets): `backbone_and_rpn`, `box_head`, `mask_head`; `__call__` runs all three on
given RoIs (initialization, feature dumps).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import layers
from spinenet_jax.modeling.maskrcnn_heads import (FastRcnnHead, FastRcnnHeadConfig, MaskHead,
                                                  MaskHeadConfig, RpnHead, RpnHeadConfig)
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig
from spinenet_jax.ops import roi_align
from spinenet_jax.ops.anchors import AnchorConfig

Array = jax.Array
BOX_CROP_SIZE = 7      # RoIAlign output of the Fast R-CNN head
MASK_CROP_SIZE = 14    # RoIAlign output of the mask head


def mask_anchor_config(min_level: int = 3, max_level: int = 7,
                       anchor_size: float = 3.0) -> AnchorConfig:
  """The Mask R-CNN yamls' anchors: one scale, aspect ratios 1, 2, 0.5 (A = 3)."""
  return AnchorConfig(min_level=min_level, max_level=max_level, num_scales=1,
                      aspect_ratios=(1.0, 2.0, 0.5), anchor_size=anchor_size)


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
  backbone: SpineNetConfig = SpineNetConfig()
  rpn_head: RpnHeadConfig = RpnHeadConfig()
  frcnn_head: FastRcnnHeadConfig = FastRcnnHeadConfig()
  mask_head: MaskHeadConfig = MaskHeadConfig()
  anchors: AnchorConfig = mask_anchor_config()
  num_classes: int = 91         # background column 0 included, as official

  def __post_init__(self):
    b, a = self.backbone, self.anchors
    if (a.min_level, a.max_level) != (b.min_level, b.max_level):
      raise ValueError(f'anchor levels {a.min_level}..{a.max_level} differ from the backbone '
                       f'endpoints {b.min_level}..{b.max_level}.')
    if self.num_classes < 2:
      raise ValueError(f'num_classes must be at least 2 (background + 1), got {self.num_classes}.')

  def to_dict(self) -> dict:
    return {'type': 'maskrcnn', 'backbone': self.backbone.to_dict(),
            'rpn_head': dataclasses.asdict(self.rpn_head),
            'frcnn_head': dataclasses.asdict(self.frcnn_head),
            'mask_head': dataclasses.asdict(self.mask_head),
            'anchors': dataclasses.asdict(self.anchors), 'num_classes': self.num_classes}

  @classmethod
  def from_dict(cls, d: dict) -> MaskRCNNConfig:
    anchors = dict(d['anchors'], aspect_ratios=tuple(d['anchors']['aspect_ratios']))
    return cls(SpineNetConfig.from_dict(d['backbone']), RpnHeadConfig(**d['rpn_head']),
               FastRcnnHeadConfig(**d['frcnn_head']), MaskHeadConfig(**d['mask_head']),
               AnchorConfig(**anchors), int(d['num_classes']))


def init_inputs(image_size: tuple[int, int]) -> tuple[Array, Array, Array, Array]:
  """(images, rois, mask_rois, mask_classes) that `MaskRCNN.init` needs: one image and one RoI."""
  rois = jnp.array([[[0.0, 0.0, 32.0, 32.0]]])
  return jnp.zeros((1, *image_size, 3), jnp.float32), rois, rois, jnp.zeros((1, 1), jnp.int32)


class MaskRCNN(nn.Module):
  """SpineNet + RPN + Fast R-CNN + mask heads. Parameters float32, compute in `dtype`."""
  config: MaskRCNNConfig = MaskRCNNConfig()
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    norm: layers.NormConfig = c.backbone.norm
    activation = c.backbone.activation
    self.backbone = SpineNet(c.backbone, self.dtype)
    self.rpn = RpnHead(c.rpn_head, c.anchors.anchors_per_location, activation, norm, self.dtype)
    self.frcnn = FastRcnnHead(c.frcnn_head, c.num_classes, activation, norm, self.dtype)
    self.mask = MaskHead(c.mask_head, c.num_classes, activation, norm, self.dtype)

  def _float(self, x: Array) -> Array:
    # Losses, proposals and post-processing run in at least float32.
    return x.astype(jnp.promote_types(self.dtype, jnp.float32))

  def backbone_and_rpn(self, images: Array, train: bool = False
                       ) -> tuple[dict[int, Array], dict[int, Array], dict[int, Array]]:
    """(endpoints {level: [B, h, w, C]}, RPN scores {level: [B, h, w, A]}, RPN box deltas
    {level: [B, h, w, 4A]}) of images [B, H, W, 3]."""
    features = self.backbone(images, train)
    scores, boxes = self.rpn(features, train)
    fl = lambda d: {k: self._float(v) for k, v in d.items()}  # noqa: E731
    return features, fl(scores), fl(boxes)

  def box_head(self, features: dict[int, Array], rois: Array, train: bool = False
               ) -> tuple[Array, Array]:
    """(class logits [B, N, num_classes], box deltas [B, N, 4 num_classes]) of RoIs [B, N, 4]
    (ymin, xmin, ymax, xmax, input pixels)."""
    crops = roi_align.multilevel_roi_align(features, rois.astype(jnp.float32), BOX_CROP_SIZE)
    classes, boxes = self.frcnn(crops, train)
    return self._float(classes), self._float(boxes)

  def mask_head(self, features: dict[int, Array], rois: Array, classes: Array | None,
                train: bool = False) -> Array:
    """Mask logits [B, N, 28, 28] of RoIs [B, N, 4] for their classes [B, N] (None: every
    class, [B, N, 28, 28, num_classes])."""
    crops = roi_align.multilevel_roi_align(features, rois.astype(jnp.float32), MASK_CROP_SIZE)
    return self._float(self.mask(crops, classes, train))

  def __call__(self, images: Array, rois: Array, mask_rois: Array, mask_classes: Array,
               train: bool = False) -> dict[str, Any]:
    """Every stage on given RoIs: the RPN outputs, the Fast R-CNN outputs of `rois` and the mask
    logits of `mask_rois` for `mask_classes`."""
    features, scores, boxes = self.backbone_and_rpn(images, train)
    classes, deltas = self.box_head(features, rois, train)
    return {'rpn_scores': scores, 'rpn_boxes': boxes, 'class_outputs': classes,
            'box_outputs': deltas, 'mask_outputs': self.mask_head(features, mask_rois,
                                                                  mask_classes, train)}
