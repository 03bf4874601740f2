"""The RetinaNet detector: SpineNet + RetinaNet head, anchors, anchor labels, focal and Huber (or
GIoU) losses and the official multilevel detection generator.

Mirrors the official `retinanet_model.py` (`build_outputs` / `build_losses` / `build_predictions`):
anchors are built for the input size at trace time (numpy constants in the jitted program), the
anchor labels are computed on the device from the padded ground truth, and the detections are
the official `MultilevelDetectionGenerator`'s (v1 per-class NMS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from spinenet_jax import losses
from spinenet_jax.analysis import summary as summary_lib
from spinenet_jax.detectors import base
from spinenet_jax.interop import head_names
from spinenet_jax.modeling import factory
from spinenet_jax.modeling.retinanet import RetinaNet, RetinaNetConfig
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import postprocess, target_assigner

Array = jax.Array


@base.register('retinanet')
@dataclasses.dataclass(frozen=True)
class RetinaNetDetector(base.Detector):
  """RetinaNet with its loss and detection settings (`config.loss`, `config.postprocess`)."""
  config: RetinaNetConfig
  dtype: str = 'float32'                                   # compute dtype name
  loss_config: losses.LossConfig = losses.LossConfig()
  detection_config: postprocess.DetectionConfig = postprocess.DetectionConfig()

  @classmethod
  def from_config(cls, config) -> RetinaNetDetector:
    return cls(factory.retinanet_config(config.model), config.model.dtype,
               factory.loss_config(config), factory.detection_config(config))

  @classmethod
  def from_model_config(cls, model_config: Any, config) -> RetinaNetDetector:
    if not isinstance(model_config, RetinaNetConfig):
      raise ValueError('the model checkpoint holds a SpineNet backbone only; a RetinaNet needs '
                       'the head too (convert without --backbone_only).')
    loss_config = dataclasses.replace(factory.loss_config(config),
                                      num_classes=model_config.head.num_classes)
    return cls(model_config, config.model.dtype, loss_config, factory.detection_config(config))

  @classmethod
  def model_config_from_dict(cls, d: dict) -> RetinaNetConfig:
    return RetinaNetConfig.from_dict(d)

  @property
  def model_config(self) -> RetinaNetConfig:
    return self.config

  num_classes_key: ClassVar[str] = 'config.model.head.num_classes'

  @property
  def num_classes(self) -> int:
    return self.config.head.num_classes

  @property
  def module(self) -> RetinaNet:
    return RetinaNet(self.config, dtype=factory.compute_dtype(self.dtype))

  def anchors(self, image_size: tuple[int, int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Anchors [N, 4] and per level {L: [H, W, A*4]} for the (padded) input size (numpy, so
    jitted programs embed them as constants: host-local, right on any number of hosts)."""
    boxes = anchor_ops.generate_anchors(self.config.anchors, image_size)
    return boxes, anchor_ops.unpack_levels(boxes, self.config.anchors, image_size)

  def init(self, rng: Array, image_size: tuple[int, int]) -> base.Variables:
    variables = self.module.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32))
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  def loss(self, variables: base.Variables, batch: Mapping[str, Array],
           rngs: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array], Any]:
    """Focal class loss and weighted box loss over the batch (official normalizers).

    Terms: 'cls_loss' and 'weighted_box_loss' (50 x Huber, or the GIoU weight x GIoU).
    Metrics: 'box_loss' (unweighted, as the official code reports it), 'num_positives' (mean
    positive anchors per image).
    """
    images = batch['images']
    image_size = tuple(images.shape[1:3])
    boxes, per_level = self.anchors(image_size)
    out, updates = self.module.apply(variables, images, train=True, mutable=['batch_stats'],
                                     rngs={'dropout': rngs['dropout']})
    labels = target_assigner.label_batch(boxes, batch['gt_boxes'], batch['gt_classes'])
    anchor_config = self.config.anchors
    cls_targets = anchor_ops.unpack_levels(labels.cls_targets[..., None], anchor_config,
                                           image_size)
    box_targets = anchor_ops.unpack_levels(labels.box_targets, anchor_config, image_size)
    terms = losses.retinanet_loss(out['cls_outputs'], out['box_outputs'], cls_targets,
                                  box_targets, labels.num_positives, self.loss_config, per_level)
    c = self.loss_config
    weight = c.box_loss_weight if c.box_loss == 'huber' else c.giou_weight
    return ({'cls_loss': terms['cls_loss'], 'weighted_box_loss': weight * terms['box_loss']},
            {'box_loss': terms['box_loss'], 'num_positives': jnp.mean(labels.num_positives)},
            updates['batch_stats'])

  def detect(self, variables: base.Variables, batch: Mapping[str, Array]) -> dict[str, Array]:
    images = batch['images']
    _, per_level = self.anchors(tuple(images.shape[1:3]))
    out = self.module.apply(variables, images, train=False)
    canvas = batch['image_info'][:, 1, :]          # output size, as the official generator clips
    return postprocess.generate_detections(
        out['cls_outputs'], out['box_outputs'], per_level, canvas, self.config.head.num_classes,
        self.detection_config)

  def checkpoint_names(self, fmt: str, params: Mapping, **options) -> dict[str, tuple[str, tuple]]:
    """The head's names (`interop/head_names.py`); tf2 takes `prefix` (default 'head')."""
    if fmt == 'tf1':
      return head_names.head_tf1_names(params)
    if fmt == 'tf2':
      return head_names.head_tf2_names(params, **options)
    raise ValueError(f"checkpoint format must be 'tf1' or 'tf2', got {fmt!r}.")

  def summary(self, image_size: tuple[int, int]) -> dict[str, Any]:
    backbone = factory.build_backbone_from(self.config.backbone, self.dtype)
    return summary_lib.summarize(self.module, image_size, backbone_collection_key='backbone',
                                 backbone_model=backbone)
