"""The evaluator interface and the evaluators by evaluation type ('bbox', 'segm').

An evaluator is fed batches of detections with the batch they came from and scores them at the
end; which evaluators run is what the detector supports (`Detector.eval_types`):

    evaluator = build('bbox', groundtruth, drop_padded=False)
    evaluator.reset()
    for batch, detections in ...: evaluator.process(detections, batch)
    metrics = evaluator.evaluate()          # {'AP': ..., ...}
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

from spinenet_jax.evaluation import coco_eval

# Batch keys the evaluators read besides the detections (ground truth when there is no json).
BATCH_KEYS = ('image_info', 'source_id')
GROUNDTRUTH_PREFIX = 'gt_'


class Evaluator(abc.ABC):
  """reset / process a batch of detections / evaluate."""

  @abc.abstractmethod
  def reset(self) -> None:
    """Forgets everything processed so far."""

  @abc.abstractmethod
  def process(self, detections: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
    """One batch of host (numpy) detections and the batch ('image_info' [B, 4, 2], 'source_id'
    [B] with -1 for padding, and 'gt_*' ground truth) they were made from."""

  @abc.abstractmethod
  def evaluate(self) -> dict[str, float]:
    """Metrics of everything processed since `reset()`."""

  @property
  @abc.abstractmethod
  def num_images(self) -> int:
    """Distinct images processed since `reset()`."""

  def results(self) -> list[dict]:
    """The detections in COCO results format (for `eval.save_detections`)."""
    return []


class CocoEvaluator(Evaluator):
  """The 12 COCO metrics of one evaluation type (`coco_eval.CocoEvaluator`, the official
  COCOEvaluator: 'bbox' for box, 'segm' for mask)."""

  iou_type = 'bbox'

  def __init__(self, groundtruth: dict | str | None, drop_padded: bool = False,
               backend: str = 'pycocotools'):
    self._coco = coco_eval.CocoEvaluator(groundtruth, drop_padded=drop_padded,
                                         iou_type=self.iou_type, backend=backend)

  def reset(self) -> None:
    self._coco.reset()

  def process(self, detections: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
    groundtruth = {k: v for k, v in batch.items() if k.startswith(GROUNDTRUTH_PREFIX)}
    self._coco.update(detections, batch['image_info'], batch['source_id'], groundtruth or None)

  def evaluate(self) -> dict[str, float]:
    return self._coco.evaluate()

  @property
  def num_images(self) -> int:
    return len(set(self._coco.image_ids))

  def results(self) -> list[dict]:
    return self._coco.results()


class CocoBoxEvaluator(CocoEvaluator):
  """The 12 COCO box metrics."""
  iou_type = 'bbox'


class CocoMaskEvaluator(CocoEvaluator):
  """The 12 COCO mask metrics; the detections carry `detection_masks` [B, M, mh, mw]."""
  iou_type = 'segm'


EVALUATORS: dict[str, Any] = {'bbox': CocoBoxEvaluator, 'segm': CocoMaskEvaluator}


def build(eval_type: str, groundtruth: dict | str | None, drop_padded: bool = False,
          backend: str = 'pycocotools') -> Evaluator:
  """The evaluator of `eval_type` ('bbox', 'segm'). `groundtruth`: a normalized dataset
  (`coco_json.normalize`), an instances json path, or None (from the batches' gt_* keys);
  `backend`: the COCO scoring library (`coco_backends.BACKENDS`, `config.eval.coco_backend`)."""
  if eval_type not in EVALUATORS:
    raise ValueError(f'no evaluator for evaluation type {eval_type!r}; known: '
                     f'{sorted(EVALUATORS)}.')
  return EVALUATORS[eval_type](groundtruth, drop_padded=drop_padded, backend=backend)
