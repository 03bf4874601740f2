"""RetinaNet detection generator: the official `MultilevelDetectionGenerator` with v1 NMS.

Per image: sigmoid scores, class 0 (background) dropped, class-agnostic boxes decoded with
`box_ops.decode` and clipped to the output canvas (`image_info[:, 1]`, e.g. 640x640, not the scaled
image). Per class: top `pre_nms_num_boxes` by score, TF1 NMS (score > 0.05, suppress IoU > 0.5) to
`max_total_size` with padded slots scored -1, then the global top `max_total_size` over all classes.
Classes come out as index + 1, i.e. COCO category ids. Padded slots keep the official boxes (the
class's top-scoring box) and score -1.

Speed without changing the result: when, in every image of the batch, at most k =
`pre_nms_num_boxes` anchors have a best (max over classes) score above `score_threshold` (every
realistic case), all classes share one candidate set: the k anchors with the best max-over-classes
score, in anchor order. Otherwise a `lax.cond` takes the literal per-class top-k. Counting per class
is not enough: with 4 classes of 50 disjoint candidates and k = 60 each class fits, yet a shared set
of 60 would drop 140 of the 200 that the per-class top-k keeps.

Why the shared set gives the official result bit for bit:
- It holds every anchor whose best score is > threshold (there are at most k, and they outrank the
  rest), hence every anchor scoring > threshold in any class. In the official path those anchors are
  in their class's top-k too (a class has no more of them than the union, <= k).
- NMS (`nms.greedy_nms`, like the TF kernel) only ever selects candidates scoring > threshold, and
  whether one survives depends only on those selected before it. So both paths select from the same
  anchors with the same boxes and scores; ties go to the lower anchor index in both (anchor order
  here; the per-class top-k lists equal scores by lower index). Same selections, same order.
- Candidates at or below threshold differ between the paths but are never selected, and padded slots
  do not read the candidates: they take the class's top box (argmax over all anchors, lower index on
  ties), which is index 0 of the official per-class top-k list, in both branches.
Everything is fixed-shape and jit-compiled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from spinenet_jax.ops import box_ops
from spinenet_jax.ops import nms

Array = jax.Array
NMS_MODES = ('per_class', 'class_agnostic')


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
  max_total_size: int = 100
  nms_iou_threshold: float = 0.5
  score_threshold: float = 0.05
  pre_nms_num_boxes: int = 5000
  nms_mode: str = 'per_class'    # official v1; 'class_agnostic': one NMS over all classes

  def __post_init__(self):
    if self.nms_mode not in NMS_MODES:
      raise ValueError(f'nms_mode must be one of {NMS_MODES}, got {self.nms_mode!r}.')


def decode_outputs(cls_outputs: dict, box_outputs: dict, anchors: dict, num_classes: int,
                   output_size: Array) -> tuple[Array, Array]:
  """Scores [B, N, num_classes - 1] (background dropped) and clipped boxes [B, N, 4] over levels.

  `anchors` is {level: [H, W, A * 4]}; `output_size` is [B, 2] (height, width).
  """
  scores, boxes = [], []
  for level in sorted(cls_outputs):
    logits = cls_outputs[level]
    b = logits.shape[0]
    scores.append(jax.nn.sigmoid(logits.reshape(b, -1, num_classes).astype(jnp.float32))[..., 1:])
    level_anchors = anchors[level].reshape(-1, 4).astype(jnp.float32)
    boxes.append(box_ops.decode(box_outputs[level].reshape(b, -1, 4), level_anchors[None]))
  boxes = box_ops.clip_boxes(jnp.concatenate(boxes, axis=1), output_size)
  return jnp.concatenate(scores, axis=1), boxes


def _class_major(boxes: Array) -> Array:
  """Class-specific boxes [B, N, C, 4] as [B, C, N, 4]."""
  return jnp.swapaxes(boxes, 1, 2)


def _candidates_shared(boxes: Array, scores: Array, k: int):
  """Candidates from the k anchors with the best class score, in anchor order: [B, C, k].
  `boxes` [B, N, 4] (class-agnostic) or [B, N, C, 4] (class-specific)."""
  best = jnp.max(scores, axis=-1)                       # [B, N]
  _, anchor_ids = jax.lax.top_k(best, k)
  anchor_ids = jnp.sort(anchor_ids, axis=-1)            # anchor order keeps the official tie-break
  cand_scores = jnp.take_along_axis(scores, anchor_ids[..., None], axis=1)   # [B, k, C]
  c = scores.shape[-1]
  if boxes.ndim == 4:
    cand_boxes = jnp.take_along_axis(_class_major(boxes), anchor_ids[:, None, :, None], axis=2)
    return cand_boxes, jnp.swapaxes(cand_scores, 1, 2)
  cand_boxes = jnp.take_along_axis(boxes, anchor_ids[..., None], axis=1)     # [B, k, 4]
  return (jnp.broadcast_to(cand_boxes[:, None], (boxes.shape[0], c, k, 4)),
          jnp.swapaxes(cand_scores, 1, 2))


def _candidates_per_class(boxes: Array, scores: Array, k: int):
  """The official per-class top-k: [B, C, k] candidates sorted by score (lower index on ties)."""
  cand_scores, ids = jax.lax.top_k(jnp.swapaxes(scores, 1, 2), k)           # [B, C, k]
  per_class = _class_major(boxes) if boxes.ndim == 4 else boxes[:, None]
  cand_boxes = jnp.take_along_axis(per_class, ids[..., None], axis=2)       # [B, C, k, 4]
  return cand_boxes, cand_scores


def _shared_candidates_exact(scores: Array, k: int, score_threshold: float) -> Array:
  """Whether `_candidates_shared` gives the official result: in every image at most k anchors
  have a max-over-classes score > score_threshold (see the module docstring)."""
  above = jnp.max(scores, axis=-1) > score_threshold          # [B, N]
  return jnp.all(jnp.sum(above, axis=-1) <= k)


def _per_class_detections(boxes: Array, scores: Array, config: DetectionConfig):
  b, n, c = scores.shape
  k = min(n, config.pre_nms_num_boxes)
  cand_boxes, cand_scores = jax.lax.cond(
      _shared_candidates_exact(scores, k, config.score_threshold),
      lambda: _candidates_shared(boxes, scores, k),
      lambda: _candidates_per_class(boxes, scores, k))
  selected, num = nms.greedy_nms(cand_boxes, cand_scores, config.max_total_size,
                                 config.nms_iou_threshold, config.score_threshold)
  det_boxes = jnp.take_along_axis(cand_boxes, selected[..., None], axis=2)   # [B, C, M, 4]
  det_scores = jnp.take_along_axis(cand_scores, selected, axis=2)
  slots = jnp.arange(config.max_total_size)
  det_scores = jnp.where(slots < num[..., None], det_scores, -1.0)
  # Padded slots carry the class's top box, as the official gather of index 0 of its top-k list.
  top = jnp.argmax(scores, axis=1)                                            # [B, C]
  if boxes.ndim == 4:
    top_box = jnp.take_along_axis(_class_major(boxes), top[..., None, None], axis=2)[:, :, 0]
  else:
    top_box = jnp.take_along_axis(boxes, top[..., None], axis=1)              # [B, C, 4]
  det_boxes = jnp.where((slots < num[..., None])[..., None], det_boxes, top_box[:, :, None])
  classes = jnp.broadcast_to(jnp.arange(c)[None, :, None], det_scores.shape)
  flat = lambda x: x.reshape(b, c * config.max_total_size, *x.shape[3:])  # noqa: E731
  top_scores, order = jax.lax.top_k(flat(det_scores), config.max_total_size)
  return (jnp.take_along_axis(flat(det_boxes), order[..., None], axis=1), top_scores,
          jnp.take_along_axis(flat(classes), order, axis=1))


def _class_agnostic_detections(boxes: Array, scores: Array, config: DetectionConfig):
  k = min(scores.shape[1], config.pre_nms_num_boxes)
  best, cls = jnp.max(scores, axis=-1), jnp.argmax(scores, axis=-1)
  cand_scores, ids = jax.lax.top_k(best, k)
  cand_boxes = jnp.take_along_axis(boxes, ids[..., None], axis=1)
  selected, num = nms.greedy_nms(cand_boxes, cand_scores, config.max_total_size,
                                 config.nms_iou_threshold, config.score_threshold)
  valid = jnp.arange(config.max_total_size) < num[:, None]
  det_scores = jnp.where(valid, jnp.take_along_axis(cand_scores, selected, axis=1), -1.0)
  det_boxes = jnp.take_along_axis(cand_boxes, selected[..., None], axis=1)
  det_classes = jnp.take_along_axis(jnp.take_along_axis(cls, ids, axis=1), selected, axis=1)
  return det_boxes, det_scores, det_classes


def generate_roi_detections(class_outputs: Array, box_outputs: Array, rois: Array,
                            output_size: Array, config: DetectionConfig = DetectionConfig(),
                            weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)) -> dict:
  """Fast R-CNN detections, as the official `GenericDetectionGenerator` (v1 NMS).

  class_outputs [B, N, C] logits (column 0 background), box_outputs [B, N, 4 C] class-specific
  deltas (channel 4 c + coordinate), rois [B, N, 4] and output_size [B, 2] in output-canvas
  pixels. Softmax, background dropped, each class's boxes decoded against the RoIs with `weights`
  (+1 convention), clipped to the canvas, then per class: top `pre_nms_num_boxes`, TF1 NMS, and the
  global top `max_total_size`. Same outputs as `generate_detections`.
  """
  b, n, c = class_outputs.shape
  scores = jax.nn.softmax(class_outputs.astype(jnp.float32), axis=-1)[..., 1:]
  deltas = box_outputs.reshape(b, n, c, 4)[:, :, 1:]
  boxes = box_ops.decode(deltas, jnp.broadcast_to(rois[:, :, None], deltas.shape).astype(
      jnp.float32), weights)
  boxes = box_ops.clip_boxes(boxes.reshape(b, n * (c - 1), 4), output_size).reshape(
      b, n, c - 1, 4)
  det_boxes, det_scores, det_classes = _per_class_detections(boxes, scores, config)
  return {'detection_boxes': det_boxes, 'detection_scores': det_scores,
          'detection_classes': (det_classes + 1).astype(jnp.int32),
          'num_detections': jnp.sum(det_scores > -1.0, axis=-1).astype(jnp.int32)}


def generate_detections(cls_outputs: dict, box_outputs: dict, anchors: dict, output_size: Array,
                        num_classes: int, config: DetectionConfig = DetectionConfig()) -> dict:
  """Top detections per image: boxes [B, M, 4] (output-canvas pixels), scores [B, M] (-1 for
  padded slots), classes [B, M] int32 (COCO ids), num_detections [B]."""
  scores, boxes = decode_outputs(cls_outputs, box_outputs, anchors, num_classes, output_size)
  if config.nms_mode == 'per_class':
    det_boxes, det_scores, det_classes = _per_class_detections(boxes, scores, config)
  else:
    det_boxes, det_scores, det_classes = _class_agnostic_detections(boxes, scores, config)
  return {'detection_boxes': det_boxes, 'detection_scores': det_scores,
          'detection_classes': (det_classes + 1).astype(jnp.int32),
          'num_detections': jnp.sum(det_scores > -1.0, axis=-1).astype(jnp.int32)}
