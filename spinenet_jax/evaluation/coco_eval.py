"""COCO box and mask evaluation as the official `COCOEvaluator` (types box and mask), on top of
pycocotools.

Detections arrive as the detection generator makes them, in output-canvas pixels; they are divided
by the per-axis scale `image_info[:, 2]` back to original-image pixels (no offset: it is 0 at
evaluation, and no re-clipping, as official) and converted to [x, y, w, h]. As official, every slot
is submitted, padded slots with score -1 included (`drop_padded=True` leaves them out).

Ground truth comes from the dataset's instances json (any COCO-format dataset, or COCO's
`instances_val2017.json`) normalized by `coco_json` (integer image ids, `iscrowd` and `area`
defaulted as COCO does, coordinates in the image files' pixels), or, when there is none (TFDS
`coco/2017`), from the evaluation batches themselves, as the official
`convert_groundtruths_to_coco_dataset` builds it from the eval parser's `groundtruths` (crowd flags
kept):
- boxes: `gt_original_boxes`, the dataset's boxes in original-image pixels (official); without
  that key, `gt_boxes` / image scale (these were clipped to the output canvas, so boxes reaching
  the right or bottom edge come back up to 1/scale px smaller than in the json);
- area: `gt_areas`, the dataset's `objects/area` (official `areas`). COCO's are segmentation
  areas, and pycocotools picks the small / medium / large objects (APs/APm/APl, ARs/ARm/ARl) by
  `area`, so these metrics equal the json's only with them. Without the key (or with -1 in a
  valid row), the box area w h is used, as official without `areas`.
Differences left with the json: TFDS coco/2017 stores areas as int64 (the json's areas truncated),
so an object whose json area lies in (1024, 1025) or (9216, 9217) px falls on a range boundary;
and the rows are those the eval parser keeps (boxes non-empty after the clip to the canvas, at
most `max_num_instances`), where official drops none but also truncates.

Mask evaluation ('segm') needs the dataset's json (the masks of the ground truth). Each detection's
mask (`detection_masks` [B, M, mh, mw] probabilities in the frame of its box) is pasted into the
original image as the official `paste_instance_masks` does (`mask_pasting`), every slot, and
RLE-encoded; each detection's area is its mask's, as the official `COCOWrapper.loadRes` makes it
for masks (the official box evaluation of a Mask R-CNN reads the same mask areas, where the 'bbox'
evaluator here takes w h: only which size range ignores an unmatched detection can differ, i.e.
APs/APm/APl and ARs/ARm/ARl). The boxes are divided by the image scale and expanded in float32, as
official. Ground-truth annotations without a decodable segmentation cannot be scored as masks:
they are left out of the mask ground truth, counted and logged by id. Where a file is a uniform rescale of the json's size, boxes
and masks are mapped to the json's pixels, where its segmentations are.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from spinenet_jax.data import coco_json, coco_masks
from spinenet_jax.evaluation import coco_backends, mask_pasting

log = logging.getLogger(__name__)

METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
                'ARmax1', 'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl')
DUMMY_SOURCE_ID = -1
IOU_TYPES = ('bbox', 'segm')


def yxyx_to_xywh(boxes: np.ndarray) -> np.ndarray:
  """[..., 4] [ymin, xmin, ymax, xmax] -> [x, y, w, h] (w = xmax - xmin, no +1), in the boxes'
  dtype (official `yxyx_to_xywh`)."""
  return np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3] - boxes[..., 1],
                   boxes[..., 2] - boxes[..., 0]], axis=-1)


def in_json_pixels(groundtruth: dict) -> dict:
  """A normalized dataset with its images' sizes, boxes and areas in the json's own pixels, where
  its segmentations are (they differ where a file is a uniform rescale of the json's size)."""
  images, scales = [], {}
  for image in groundtruth['images']:
    sy, sx = image.get('scale', (1.0, 1.0))
    height, width = image.get('json_size') or (None, None)
    if (sy, sx) != (1.0, 1.0) and height and width:
      scales[image['id']] = (sy, sx)
      image = dict(image, height=height, width=width, scale=(1.0, 1.0))
    images.append(image)
  if not scales:
    return groundtruth
  annotations = []
  for ann in groundtruth['annotations']:
    if ann['image_id'] in scales:
      sy, sx = scales[ann['image_id']]
      x, y, w, h = ann['bbox']
      ann = dict(ann, bbox=[x / sx, y / sy, w / sx, h / sy], area=ann['area'] / (sx * sy))
    annotations.append(ann)
  return dict(groundtruth, images=images, annotations=annotations)


def with_decodable_masks(groundtruth: dict, name: str | None) -> dict:
  """`groundtruth` without the annotations whose segmentation does not decode to a mask of its
  image (missing, empty, malformed, an RLE of another size), each counted and logged by id: the
  scoring libraries would fail on them after the whole inference, or score them as boxes."""
  sizes = {i['id']: (i.get('height'), i.get('width')) for i in groundtruth['images']}
  kept, dropped = [], []
  for ann in groundtruth['annotations']:
    height, width = sizes.get(ann['image_id'], (None, None))
    if not height or not width:      # sized by its decoded image at evaluation: not checked here
      kept.append(ann)
      continue
    try:
      coco_masks.segmentation_mask(ann.get('segmentation'), int(height), int(width))
    except (ValueError, TypeError, KeyError, IndexError) as e:
      dropped.append((ann.get('id'), str(e)))
      continue
    kept.append(ann)
  if not dropped:
    return groundtruth
  log.warning('%s: %d annotations without a decodable segmentation are left out of the mask '
              'ground truth (box metrics keep them): %s', name or 'ground truth', len(dropped),
              '; '.join(f'id {i}: {why}' for i, why in dropped[:10]))
  return dict(groundtruth, annotations=kept)


class CocoEvaluator:
  """Accumulates detections batch by batch; `evaluate()` returns the 12 standard COCO metrics of
  boxes (`iou_type='bbox'`) or masks (`'segm'`)."""

  def __init__(self, groundtruth: dict | str | None = None, drop_padded: bool = False,
               iou_type: str = 'bbox', backend: str = 'pycocotools'):
    """`groundtruth`: a normalized dataset (`coco_json.normalize`), the path of an instances json
    (normalized here: missing `iscrowd` / `area` defaulted, problems raised as
    coco_json.DatasetError before any inference is spent), or None to build it from the batches
    (boxes only: 'segm' raises ValueError). `backend`: the COCO scoring library
    (`coco_backends.BACKENDS`; ValueError, naming the pip command, when it is not installed).
    """
    if iou_type not in IOU_TYPES:
      raise ValueError(f'iou_type must be one of {IOU_TYPES}, got {iou_type!r}.')
    coco_backends.check_backend(backend)
    if isinstance(groundtruth, (str, os.PathLike)):
      self.annotation_file = os.fspath(groundtruth)
      groundtruth, report = coco_json.normalize(self.annotation_file)
      coco_json.log_report(report)
    else:
      self.annotation_file = None if groundtruth is None else groundtruth.get(
          'json_path', '(the given ground truth)')
    if iou_type == 'segm':
      if groundtruth is None:
        raise ValueError(
            'Mask evaluation needs the ground-truth masks of an instances json: set '
            'config.eval.annotation_file (for TFDS coco/2017, COCO\'s instances_val2017.json), '
            'or evaluate a COCO folder or the synthetic dataset, whose jsons have them.')
      self._scales = {i['id']: i.get('scale', (1.0, 1.0)) for i in groundtruth['images']}
      groundtruth = with_decodable_masks(in_json_pixels(groundtruth), self.annotation_file)
      self._images = {i['id']: i for i in groundtruth['images']}
    self.groundtruth = groundtruth
    self.drop_padded = drop_padded
    self.iou_type = iou_type
    self.backend = backend
    self.reset()

  def reset(self) -> None:
    self.detections: list[dict] = []
    self.image_ids: list[int] = []
    self._gt_images: list[dict] = []
    self._gt_annotations: list[dict] = []

  def update(self, detections: dict, image_info: np.ndarray, source_id: np.ndarray,
             groundtruth: dict | None = None) -> None:
    """One batch. `detections`: detection_boxes [B, M, 4] (canvas pixels), detection_scores
    [B, M], detection_classes [B, M], and for 'segm' detection_masks [B, M, mh, mw] (mask
    probabilities in each box's frame); `image_info` [B, 4, 2]; `source_id` [B] (-1: padding).
    `groundtruth` (needed without an annotation file, ignored with one): gt_boxes [B, G, 4]
    canvas pixels, gt_classes [B, G] (-1 padding), optional gt_is_crowd [B, G] (default 0),
    gt_areas [B, G] and gt_original_boxes [B, G, 4] in original-image pixels (see the module
    docstring for their defaults); other keys are ignored."""
    image_info = np.asarray(image_info, np.float64)
    source_id = np.asarray(source_id).reshape(-1)
    scale = np.tile(image_info[:, 2, :], 2)[:, None, :]                  # [B, 1, 4]
    boxes = yxyx_to_xywh(np.asarray(detections['detection_boxes'], np.float64) / scale)
    scores = np.asarray(detections['detection_scores'], np.float64)
    classes = np.asarray(detections['detection_classes'])
    for i, image_id in enumerate(source_id.tolist()):
      if image_id == DUMMY_SOURCE_ID:
        continue
      self.image_ids.append(int(image_id))
      if self.iou_type == 'segm':
        if 'detection_masks' not in detections:
          raise KeyError("Mask evaluation needs 'detection_masks' [B, M, mh, mw] in the "
                         f"detections; got {sorted(detections)}.")
        # Official: the boxes divided by the image scale in float32, then [x, y, w, h].
        boxes32 = yxyx_to_xywh(np.asarray(detections['detection_boxes'][i], np.float32) /
                        np.tile(image_info[i, 2], 2).astype(np.float32))
        self._add_masks(int(image_id), boxes32, scores[i], classes[i],
                        np.asarray(detections['detection_masks'][i]), image_info[i, 0])
        continue
      for box, score, cls in zip(boxes[i], scores[i], classes[i]):
        if self.drop_padded and score <= -1.0:
          continue
        self.detections.append({'image_id': int(image_id), 'category_id': int(cls),
                                'bbox': [float(v) for v in box], 'score': float(score)})
      if groundtruth is not None and self.groundtruth is None:
        self._add_groundtruth(int(image_id), image_info[i], groundtruth, i, scale[i])

  def _add_masks(self, image_id: int, boxes: np.ndarray, scores: np.ndarray,
                 classes: np.ndarray, masks: np.ndarray, original_size: np.ndarray) -> None:
    """One image's detections with their masks pasted and RLE-encoded, in the json's pixels
    (float32 [M, 4] [x, y, w, h] boxes in the file's pixels)."""
    image = self._images.get(image_id)
    if image is None:
      raise coco_json.DatasetError(f'Evaluated image id {image_id} is not in the ground truth '
                                   f'{self.annotation_file}.')
    if not image.get('height') or not image.get('width'):
      # A json without image sizes: the decoded image's, where official pastes (image_info[0]).
      image['height'], image['width'] = (int(v) for v in original_size)
    sy, sx = self._scales[image_id]
    keep = np.ones(len(scores), bool) if not self.drop_padded else scores > -1.0
    boxes = boxes[keep]
    if (sy, sx) != (1.0, 1.0):
      boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
    rles = mask_pasting.paste_and_encode(masks[keep], boxes, int(image['height']),
                                         int(image['width']))
    for box, score, cls, rle in zip(boxes, scores[keep], classes[keep], rles):
      self.detections.append({'image_id': image_id, 'category_id': int(cls),
                              'bbox': [float(v) for v in box], 'score': float(score),
                              'segmentation': rle})

  def _add_groundtruth(self, image_id: int, info: np.ndarray, gt: dict, i: int,
                       scale: np.ndarray) -> None:
    height, width = info[0]
    self._gt_images.append({'id': image_id, 'height': float(height), 'width': float(width)})
    if 'gt_original_boxes' in gt:
      boxes = yxyx_to_xywh(np.asarray(gt['gt_original_boxes'][i], np.float64))
    else:
      boxes = yxyx_to_xywh(np.asarray(gt['gt_boxes'][i], np.float64) / scale)
    classes = np.asarray(gt['gt_classes'][i])
    crowd = np.asarray(gt['gt_is_crowd'][i]) if 'gt_is_crowd' in gt else np.zeros_like(classes)
    box_areas = boxes[:, 2] * boxes[:, 3]
    areas = np.asarray(gt['gt_areas'][i], np.float64) if 'gt_areas' in gt else box_areas
    areas = np.where(areas < 0, box_areas, areas)   # -1: padding, or no area known
    for box, cls, is_crowd, area in zip(boxes, classes, crowd, areas):
      if cls <= 0:
        continue
      self._gt_annotations.append({
          'id': len(self._gt_annotations) + 1, 'image_id': image_id, 'category_id': int(cls),
          'bbox': [float(v) for v in box], 'area': float(area), 'iscrowd': int(is_crowd)})

  def _groundtruth(self) -> dict:
    """The ground-truth dataset: the json's, or the one built from the batches."""
    if self.groundtruth is not None:
      return self.groundtruth
    if not self._gt_images:
      raise ValueError('No annotation file and no ground truth given to CocoEvaluator.update().')
    categories = sorted({a['category_id'] for a in self._gt_annotations} |
                        {d['category_id'] for d in self.detections})
    return {'images': self._gt_images, 'annotations': self._gt_annotations,
            'categories': [{'id': c} for c in categories]}

  def evaluate(self) -> dict[str, float]:
    """The 12 COCO metrics of `iou_type` over the images seen since `reset()`."""
    groundtruth = self._groundtruth()
    image_ids = sorted(set(self.image_ids))
    if not image_ids:
      log.warning('No images were evaluated; all metrics are 0.')
      return {name: 0.0 for name in METRIC_NAMES}
    unknown = sorted(set(image_ids) - {i['id'] for i in groundtruth['images']})
    if unknown:
      raise coco_json.DatasetError(f'{len(unknown)} evaluated image ids are not in the ground truth '
                       f'{self.annotation_file or "(from the batches)"}: {unknown[:10]}')
    if not self.detections:
      log.warning('No detections to evaluate.')
    # Masks: the scoring libraries take each detection's area from its mask (as the official
    # COCOWrapper's loadRes) only when the detection has no 'bbox'.
    drop = ('bbox',) if self.iou_type == 'segm' else ()
    detections = [{k: v for k, v in d.items() if k not in drop} for d in self.detections]
    stats, summary = coco_backends.score(groundtruth, detections, self.iou_type, image_ids,
                                         self.backend)
    log.info('COCO %s evaluation over %d images (%s):\n%s', self.iou_type, len(image_ids),
             self.backend, summary)
    return {name: float(v) for name, v in zip(METRIC_NAMES, stats)}

  def results(self) -> list[dict]:
    """The detections in COCO results format, in the json's own image ids (strings included) and
    pixels (a file that is a rescale of the json's size: boxes scaled back; masks are pasted in
    the json's pixels)."""
    if self.groundtruth is None:
      return self.detections
    images = {i['id']: i for i in self.groundtruth['images']}
    out = []
    for d in self.detections:
      image = images.get(d['image_id'], {})
      sy, sx = image.get('scale', (1.0, 1.0))   # (1, 1) for masks: in the json's pixels
      x, y, w, h = d['bbox']
      out.append(dict(d, image_id=image.get('original_id', d['image_id']),
                      bbox=[x / sx, y / sy, w / sx, h / sy]))
    return out
