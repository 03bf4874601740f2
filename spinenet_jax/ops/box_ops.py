"""Box geometry for [ymin, xmin, ymax, xmax] boxes, with the official pixel conventions.

Encoding (`FasterRcnnBoxCoder`, used for training targets) measures sizes without +1 and adds 1e-8;
decoding (`box_utils.decode_boxes`, used at inference) uses the "+1" pixel convention and clips the
log-size deltas at log(1000/16). This asymmetry is the official code's and is kept on purpose.
The Fast R-CNN targets (`encode_boxes`, weights 10, 10, 5, 5) use the +1 convention on both sides.
RoIs are matched with `bbox_overlap` (padding-aware, epsilon in the union), anchors with
`pairwise_iou`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

EPSILON = 1e-8
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def encode(boxes, anchors, weights=None):
  """Targets [ty, tx, th, tw] of `boxes` relative to `anchors` (no +1; FasterRcnnBoxCoder)."""
  ha = anchors[..., 2] - anchors[..., 0]
  wa = anchors[..., 3] - anchors[..., 1]
  yca = anchors[..., 0] + ha / 2.0
  xca = anchors[..., 1] + wa / 2.0
  h = boxes[..., 2] - boxes[..., 0]
  w = boxes[..., 3] - boxes[..., 1]
  yc = boxes[..., 0] + h / 2.0
  xc = boxes[..., 1] + w / 2.0
  ha, wa, h, w = ha + EPSILON, wa + EPSILON, h + EPSILON, w + EPSILON
  codes = jnp.stack([(yc - yca) / ha, (xc - xca) / wa, jnp.log(h / ha), jnp.log(w / wa)], axis=-1)
  if weights is not None:
    codes = codes * jnp.asarray(weights, codes.dtype)
  return codes


def decode(codes, anchors, weights=None):
  """Boxes from [dy, dx, dh, dw] deltas (official `decode_boxes`: +1 sizes, clipped dh/dw)."""
  codes = codes.astype(anchors.dtype)
  if weights is not None:
    codes = codes / jnp.asarray(weights, codes.dtype)
  dy, dx, dh, dw = (codes[..., i] for i in range(4))
  dh = jnp.minimum(dh, BBOX_XFORM_CLIP)
  dw = jnp.minimum(dw, BBOX_XFORM_CLIP)
  ha = anchors[..., 2] - anchors[..., 0] + 1.0
  wa = anchors[..., 3] - anchors[..., 1] + 1.0
  yca = anchors[..., 0] + 0.5 * ha
  xca = anchors[..., 1] + 0.5 * wa
  yc = dy * ha + yca
  xc = dx * wa + xca
  h = jnp.exp(dh) * ha
  w = jnp.exp(dw) * wa
  ymin = yc - 0.5 * h
  xmin = xc - 0.5 * w
  return jnp.stack([ymin, xmin, ymin + h - 1.0, xmin + w - 1.0], axis=-1)


def decode_encoded(codes, anchors, clip: bool = False):
  """Inverse of `encode` (no +1): boxes in the training-target convention. With `clip`, dh and dw
  are clipped at log(1000/16) first, which keeps the gradient of losses on decoded predictions
  bounded."""
  if clip:
    codes = jnp.concatenate([codes[..., :2], jnp.minimum(codes[..., 2:], BBOX_XFORM_CLIP)], axis=-1)
  ha = anchors[..., 2] - anchors[..., 0] + EPSILON
  wa = anchors[..., 3] - anchors[..., 1] + EPSILON
  yc = codes[..., 0] * ha + anchors[..., 0] + (ha - EPSILON) / 2.0
  xc = codes[..., 1] * wa + anchors[..., 1] + (wa - EPSILON) / 2.0
  h = jnp.exp(codes[..., 2]) * ha - EPSILON
  w = jnp.exp(codes[..., 3]) * wa - EPSILON
  return jnp.stack([yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0], axis=-1)


def clip_boxes(boxes, image_size):
  """Clips [..., N, 4] boxes to [0, size - 1] per axis (official `clip_boxes`).

  `image_size` is [..., 2] (height, width) with the leading dims of `boxes` (without N).
  """
  image_size = jnp.asarray(image_size, boxes.dtype)
  limits = (jnp.concatenate([image_size, image_size], axis=-1) - 1.0)[..., None, :]
  return jnp.maximum(jnp.minimum(boxes, limits), 0.0)


def area(boxes):
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1, boxes2):
  """IoU [..., N, M] without +1; 0 where boxes do not intersect (official IouSimilarity)."""
  ymin = jnp.maximum(boxes1[..., :, None, 0], boxes2[..., None, :, 0])
  xmin = jnp.maximum(boxes1[..., :, None, 1], boxes2[..., None, :, 1])
  ymax = jnp.minimum(boxes1[..., :, None, 2], boxes2[..., None, :, 2])
  xmax = jnp.minimum(boxes1[..., :, None, 3], boxes2[..., None, :, 3])
  inter = jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)
  union = area(boxes1)[..., :, None] + area(boxes2)[..., None, :] - inter
  return jnp.where(inter == 0.0, 0.0, inter / jnp.where(inter == 0.0, 1.0, union))


def encode_boxes(boxes, anchors, weights=None):
  """Targets [dy, dx, dh, dw] of `boxes` [..., 4] relative to `anchors` (broadcastable), both
  [ymin, xmin, ymax, xmax] in pixels: official `utils/box_utils.encode_boxes`.

  Unlike `encode` (FasterRcnnBoxCoder) this uses the "+1" pixel convention, h = ymax - ymin + 1 and
  centre = ymin + h / 2, with no epsilon; the Fast R-CNN box targets use it with weights
  (10, 10, 5, 5). Its inverse is `decode` with the same weights (official `decode_boxes`, which
  also clips dh and dw at log(1000/16)). `boxes` is cast to the anchors' dtype, as officially.
  """
  boxes = boxes.astype(anchors.dtype)
  box_h = boxes[..., 2] - boxes[..., 0] + 1.0
  box_w = boxes[..., 3] - boxes[..., 1] + 1.0
  box_yc = boxes[..., 0] + 0.5 * box_h
  box_xc = boxes[..., 1] + 0.5 * box_w
  anchor_h = anchors[..., 2] - anchors[..., 0] + 1.0
  anchor_w = anchors[..., 3] - anchors[..., 1] + 1.0
  anchor_yc = anchors[..., 0] + 0.5 * anchor_h
  anchor_xc = anchors[..., 1] + 0.5 * anchor_w
  codes = [(box_yc - anchor_yc) / anchor_h, (box_xc - anchor_xc) / anchor_w,
           jnp.log(box_h / anchor_h), jnp.log(box_w / anchor_w)]
  if weights:
    codes = [c * w for c, w in zip(codes, weights)]
  return jnp.stack(codes, axis=-1)


def bbox_overlap(boxes, gt_boxes):
  """IoU [..., N, K] of `boxes` [..., N, 4] with padded `gt_boxes` [..., K, 4]: official
  `utils/box_utils.bbox_overlap`, used to match RoIs to ground truth.

  Differs from `pairwise_iou` on purpose: no +1, the union gets +1e-8 (so an IoU that is exactly
  0.5 in float32 stays 0.5, and an empty box has IoU 0 rather than NaN), and a ground-truth row
  whose largest coordinate is negative (the -1 padding) has IoU -1 with every box.
  """
  by0, bx0, by1, bx1 = (boxes[..., :, None, i] for i in range(4))
  gy0, gx0, gy1, gx1 = (gt_boxes[..., None, :, i] for i in range(4))
  i_area = (jnp.maximum(jnp.minimum(bx1, gx1) - jnp.maximum(bx0, gx0), 0.0)
            * jnp.maximum(jnp.minimum(by1, gy1) - jnp.maximum(by0, gy0), 0.0))
  bb_area = (by1 - by0) * (bx1 - bx0)
  gt_area = (gy1 - gy0) * (gx1 - gx0)
  iou = i_area / (bb_area + gt_area - i_area + 1e-8)
  padded = jnp.max(gt_boxes, axis=-1) < 0.0
  return jnp.where(padded[..., None, :], -1.0, iou)
