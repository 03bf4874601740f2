"""RetinaNet and Mask R-CNN losses as the official `modeling/losses.py`, plus GIoU and a global
normalizer.

Official defaults: focal loss alpha 0.25, gamma 1.5 over all 91 class columns (background included,
always a negative); Huber delta 0.1 on box deltas (TF1 huber: 0.5 x^2 inside delta, delta |x| -
0.5 delta^2 outside, no division by delta), box weight 50; both normalized by sum(num_positives) + 1;
anchors labelled -2 contribute no class loss; boxes contribute where the target is non-zero. L2 is
4e-5 * sum(v^2) / 2 over kernels only, added to the loss.

Normalization: the official code normalizes each replica's loss by that replica's positives and
averages the replicas. `normalizer_group_size=k` reproduces that on any hardware by treating each k
consecutive images as one replica; `None` normalizes once over the global batch.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from spinenet_jax.ops import box_ops

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
  num_classes: int = 91
  focal_alpha: float = 0.25
  focal_gamma: float = 1.5
  huber_delta: float = 0.1
  box_loss_weight: float = 50.0
  box_loss: str = 'huber'            # 'huber' (official) or 'giou'
  giou_weight: float = 1.0           # weight of the GIoU loss when box_loss='giou'
  normalizer_group_size: int | None = None   # images per "replica"; None: global normalizer
  l2_weight_decay: float = 4e-5


def focal_loss(logits: Array, targets: Array, alpha: float, gamma: float) -> Array:
  """Elementwise focal loss; modulator exp(gamma * (t * -x - softplus(-x))) = (1 - p_t)^gamma."""
  logits = logits.astype(jnp.float32)
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  modulator = jnp.exp(gamma * (targets * -logits - jax.nn.softplus(-logits)))
  loss = modulator * ce
  return jnp.where(targets == 1.0, alpha * loss, (1.0 - alpha) * loss)


def huber_loss(targets: Array, outputs: Array, delta: float) -> Array:
  """TF1 `tf.losses.huber_loss` elementwise (no division by delta).

  `optax.losses.huber_loss(predictions, targets, delta=)` is the same formula, op for op: with
  e = |predictions - targets|, q = min(e, delta): 0.5 q^2 + delta (e - q).
  """
  return optax.losses.huber_loss(outputs.astype(jnp.float32), targets, delta=delta)


def giou_loss(pred_boxes: Array, target_boxes: Array) -> Array:
  """1 - GIoU of [..., 4] boxes (Rezatofighi et al. 2019)."""
  inter_min = jnp.maximum(pred_boxes[..., :2], target_boxes[..., :2])
  inter_max = jnp.minimum(pred_boxes[..., 2:], target_boxes[..., 2:])
  inter = jnp.prod(jnp.maximum(inter_max - inter_min, 0.0), axis=-1)
  area_p = jnp.maximum(box_ops.area(pred_boxes), 0.0)
  area_t = jnp.maximum(box_ops.area(target_boxes), 0.0)
  union = area_p + area_t - inter
  iou = inter / jnp.maximum(union, 1e-8)
  hull = jnp.prod(jnp.maximum(pred_boxes[..., 2:], target_boxes[..., 2:]) -
                  jnp.minimum(pred_boxes[..., :2], target_boxes[..., :2]), axis=-1)
  return 1.0 - (iou - (hull - union) / jnp.maximum(hull, 1e-8))


def _group(x: Array, group_size: int | None) -> Array:
  """[B, ...] -> [R, B / R, ...] replica groups (one group when group_size is None)."""
  b = x.shape[0]
  size = b if group_size is None else group_size
  if b % size:
    raise ValueError(f'batch size {b} is not divisible by normalizer_group_size {size}.')
  return x.reshape(b // size, size, *x.shape[1:])


def _per_image_sum(x: Array) -> Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def retinanet_loss(cls_outputs: Mapping[int, Array], box_outputs: Mapping[int, Array],
                   cls_targets: Mapping[int, Array], box_targets: Mapping[int, Array],
                   num_positives: Array, config: LossConfig = LossConfig(),
                   anchors: Mapping[int, Array] | None = None) -> dict[str, Array]:
  """Class, box and total model loss (without L2).

  Per level: cls_outputs [B, H, W, A*C] logits, box_outputs [B, H, W, A*4], cls_targets
  [B, H, W, A] ints (class, -1 negative, -2 ignored), box_targets [B, H, W, A*4]; num_positives [B].
  `anchors` ({level: [H, W, A*4]}) is needed for the GIoU box loss only.
  """
  cls_per_image, box_per_image = 0.0, 0.0
  for level in sorted(cls_outputs):
    logits = cls_outputs[level]
    b, h, w, _ = logits.shape
    targets = cls_targets[level].reshape(b, h, w, -1)
    one_hot = jax.nn.one_hot(targets, config.num_classes, dtype=jnp.float32)
    loss = focal_loss(logits.reshape(b, h, w, -1, config.num_classes), one_hot, config.focal_alpha,
                      config.focal_gamma)
    loss = jnp.where((targets == -2)[..., None], 0.0, loss)
    cls_per_image = cls_per_image + _per_image_sum(loss)
    box_per_image = box_per_image + _per_image_sum(
        _box_loss(box_outputs[level], box_targets[level], targets, config,
                  None if anchors is None else anchors[level]))
  size = config.normalizer_group_size
  normalizer = jnp.sum(_group(num_positives.astype(jnp.float32), size), axis=1) + 1.0   # [R]
  cls = jnp.mean(jnp.sum(_group(cls_per_image, size), axis=1) / (normalizer + 1e-20))
  box_normalizer = normalizer * (4.0 if config.box_loss == 'huber' else 1.0)
  box = jnp.mean(jnp.sum(_group(box_per_image, size), axis=1) / (box_normalizer + 1e-20))
  weight = config.box_loss_weight if config.box_loss == 'huber' else config.giou_weight
  return {'cls_loss': cls, 'box_loss': box, 'model_loss': cls + weight * box}


def _box_loss(outputs: Array, targets: Array, cls_targets: Array, config: LossConfig,
              anchors: Array | None) -> Array:
  b, h, w, _ = outputs.shape
  outputs = outputs.reshape(b, h, w, -1, 4).astype(jnp.float32)
  targets = targets.reshape(b, h, w, -1, 4)
  if config.box_loss == 'huber':
    # The official mask is per coordinate: targets that are exactly 0 carry no loss.
    return jnp.where(targets != 0.0, huber_loss(targets, outputs, config.huber_delta), 0.0)
  if config.box_loss == 'giou':
    if anchors is None:
      raise ValueError('box_loss="giou" needs the anchors.')
    anchors = anchors.reshape(h, w, -1, 4)
    loss = giou_loss(box_ops.decode_encoded(outputs, anchors, clip=True),
                     box_ops.decode_encoded(targets, anchors))
    return jnp.where(cls_targets > 0, loss, 0.0)
  raise ValueError(f'box_loss must be "huber" or "giou", got {config.box_loss!r}.')


# Mask R-CNN (official RpnScoreLoss, RpnBoxLoss, FastrcnnClassLoss, FastrcnnBoxLoss, MaskrcnnLoss)


@dataclasses.dataclass(frozen=True)
class MaskRCNNLossConfig:
  rpn_batch_size_per_im: int = 256     # the RPN score normalizer: images x 256
  rpn_huber_delta: float = 1.0 / 9.0
  frcnn_huber_delta: float = 1.0
  normalizer_group_size: int | None = None   # images per "replica"; None: the global batch


def _group_ratio(sums: Array, counts: Array, size: int | None) -> Array:
  """Mean over replica groups of sum / count (0 where a group's count is 0, as TF's
  SUM_BY_NONZERO_WEIGHTS)."""
  total = jnp.sum(_group(sums, size), axis=1)
  count = jnp.sum(_group(counts.astype(jnp.float32), size), axis=1)
  return jnp.mean(jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0))


def maskrcnn_loss(outputs: Mapping[str, Any], targets: Mapping[str, Any],
                  config: MaskRCNNLossConfig = MaskRCNNLossConfig()) -> dict[str, Array]:
  """The five Mask R-CNN loss terms (weights 1), each normalized per replica group as official.

  outputs: 'rpn_scores' {level: [B, h, w, A]}, 'rpn_boxes' {level: [B, h, w, 4A]},
  'class_outputs' [B, N, C], 'box_outputs' [B, N, 4C], 'mask_outputs' [B, M, S, S] (logits of
  each sampled foreground RoI's class). targets: 'rpn_score_targets' {level: [B, h, w, A]} (1, 0,
  -1 ignored), 'rpn_box_targets' {level: [B, h, w, 4A]}, 'class_targets' [B, N] int (0:
  background), 'box_targets' [B, N, 4], 'mask_targets' [B, M, S, S] soft, 'mask_classes' [B, M]
  (0: padding). RPN score: sigmoid CE over non-ignored anchors / (images x 256), levels summed;
  RPN box: Huber (1/9) over non-zero targets / their count, each level separately, summed; Fast
  R-CNN: softmax CE / RoIs, Huber (1) of the target class's deltas over foreground / (4 x fg);
  mask: sigmoid CE over foreground masks / their pixels.
  """
  size = config.normalizer_group_size
  b = outputs['class_outputs'].shape[0]
  per_image = jnp.full((b,), float(config.rpn_batch_size_per_im))
  rpn_score, rpn_box = 0.0, 0.0
  for level in sorted(outputs['rpn_scores']):
    labels = targets['rpn_score_targets'][level]
    ce = optax.sigmoid_binary_cross_entropy(outputs['rpn_scores'][level].astype(jnp.float32),
                                            jnp.maximum(labels, 0).astype(jnp.float32))
    rpn_score = rpn_score + _group_ratio(_per_image_sum(jnp.where(labels >= 0, ce, 0.0)),
                                         per_image, size)
    box_targets = targets['rpn_box_targets'][level]
    nonzero = box_targets != 0.0
    huber = huber_loss(box_targets, outputs['rpn_boxes'][level], config.rpn_huber_delta)
    rpn_box = rpn_box + _group_ratio(_per_image_sum(jnp.where(nonzero, huber, 0.0)),
                                     _per_image_sum(nonzero), size)
  classes = targets['class_targets'].astype(jnp.int32)
  class_ce = optax.softmax_cross_entropy_with_integer_labels(
      outputs['class_outputs'].astype(jnp.float32), classes)
  frcnn_class = _group_ratio(_per_image_sum(class_ce),
                             jnp.full((b,), float(classes.shape[1])), size)
  n, c4 = outputs['box_outputs'].shape[1:]
  deltas = outputs['box_outputs'].reshape(b, n, c4 // 4, 4)
  deltas = jnp.take_along_axis(deltas, classes[:, :, None, None], axis=2)[:, :, 0]
  foreground = (classes > 0)[..., None]
  huber = huber_loss(targets['box_targets'], deltas, config.frcnn_huber_delta)
  frcnn_box = _group_ratio(_per_image_sum(jnp.where(foreground, huber, 0.0)),
                           4 * _per_image_sum(classes > 0), size)
  mask_fg = (targets['mask_classes'] > 0)[..., None, None]
  mask_ce = optax.sigmoid_binary_cross_entropy(outputs['mask_outputs'].astype(jnp.float32),
                                               targets['mask_targets'].astype(jnp.float32))
  pixels = mask_ce.shape[-1] * mask_ce.shape[-2]
  mask = _group_ratio(_per_image_sum(jnp.where(mask_fg, mask_ce, 0.0)),
                      pixels * _per_image_sum(targets['mask_classes'] > 0), size)
  return {'rpn_score_loss': rpn_score, 'rpn_box_loss': rpn_box,
          'fast_rcnn_class_loss': frcnn_class, 'fast_rcnn_box_loss': frcnn_box,
          'mask_loss': mask}


KERNEL_PATTERN = re.compile(r'(^|/)kernel$')


def l2_regularization(params: Any, weight_decay: float) -> Array:
  """weight_decay * sum(v^2) / 2 over kernels only (official REGULARIZATION_VAR_REGEX)."""
  total = 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if KERNEL_PATTERN.search(name):
      total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32))) / 2.0
  return weight_decay * total
