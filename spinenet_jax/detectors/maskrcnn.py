"""The Mask R-CNN detector: SpineNet + RPN + Fast R-CNN + mask heads, with the official targets,
losses and detections (`maskrcnn_model.py` `build_outputs` / `build_losses` / `build_predictions`).

Training, all on the device in one jitted step: backbone and RPN; proposals from the RPN outputs
(stop-gradient, top 2000 per level before NMS, 1000 after, 1000 overall); RoI sampling (ground
truth appended, 512 per image at 25% foreground) and their Fast R-CNN targets; RoIAlign and the
Fast R-CNN head; the top-128 foreground RoIs' mask targets (the parser's 112 x 112 crops re-cropped
at 28 x 28) and the mask head; the RPN anchor labels; the five losses (`losses.maskrcnn_loss`).
Detection: proposals (top 1000 per level before NMS), Fast R-CNN head, the official
`GenericDetectionGenerator` (`postprocess.generate_roi_detections`), and the mask head on the 100
detection boxes (padded slots included, as official) for their classes, sigmoid:
'detection_masks' [B, 100, 28, 28] in each box's frame.
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
from spinenet_jax.modeling import factory
from spinenet_jax.modeling import maskrcnn as maskrcnn_model
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import mask_targets, postprocess, proposals, roi_sampler, rpn_targets

Array = jax.Array
GT_MASK_SIZE = 112     # the official parser's mask crops (`mask_crop_size`)


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
  """RPN labelling and proposal settings (official `anchor`, `roi_proposal` params)."""
  match_threshold: float = 0.7
  unmatched_threshold: float = 0.3
  batch_size_per_im: int = 256
  fg_fraction: float = 0.5
  pre_nms_top_k: int = 2000          # training
  test_pre_nms_top_k: int = 1000
  post_nms_top_k: int = 1000         # per level and overall, train and test
  nms_iou_threshold: float = 0.7


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """RoI and mask sampling (official `roi_sampling`, `mask_sampling` params)."""
  num_samples_per_image: int = 512
  fg_fraction: float = 0.25
  fg_iou_threshold: float = 0.5
  bg_iou_threshold_hi: float = 0.5
  bg_iou_threshold_lo: float = 0.0
  mix_gt_boxes: bool = True
  num_mask_samples_per_image: int = 128


@base.register('maskrcnn')
@dataclasses.dataclass(frozen=True)
class MaskRCNNDetector(base.Detector):
  """Mask R-CNN with its target, loss and detection settings."""
  config: MaskRCNNConfig
  dtype: str = 'float32'
  loss_config: losses.MaskRCNNLossConfig = losses.MaskRCNNLossConfig()
  detection_config: postprocess.DetectionConfig = postprocess.DetectionConfig(
      pre_nms_num_boxes=1000)
  proposal_config: ProposalConfig = ProposalConfig()
  sampler_config: SamplerConfig = SamplerConfig()

  eval_types: ClassVar[tuple[str, ...]] = ('bbox', 'segm')
  num_classes_key: ClassVar[str] = 'config.model.num_classes'

  @classmethod
  def from_config(cls, config) -> MaskRCNNDetector:
    return cls._with(factory.maskrcnn_config(config.model), config)

  @classmethod
  def from_model_config(cls, model_config: Any, config) -> MaskRCNNDetector:
    if not isinstance(model_config, MaskRCNNConfig):
      raise ValueError('the model checkpoint is not a Mask R-CNN (model.json type '
                       f'{type(model_config).__name__}).')
    return cls._with(model_config, config)

  @classmethod
  def _with(cls, model_config: MaskRCNNConfig, config) -> MaskRCNNDetector:
    return cls(model_config, config.model.dtype, factory.maskrcnn_loss_config(config),
               factory.detection_config(config), ProposalConfig(**dict(config.rpn)),
               SamplerConfig(**dict(config.roi_sampler)))

  @classmethod
  def model_config_from_dict(cls, d: dict) -> MaskRCNNConfig:
    return MaskRCNNConfig.from_dict(d)

  @property
  def model_config(self) -> MaskRCNNConfig:
    return self.config

  @property
  def num_classes(self) -> int:
    return self.config.num_classes

  @property
  def module(self) -> MaskRCNN:
    return MaskRCNN(self.config, dtype=factory.compute_dtype(self.dtype))

  @property
  def parser_options(self) -> dict[str, Any]:
    return {'include_masks': True, 'mask_crop_size': GT_MASK_SIZE}

  def anchors(self, image_size: tuple[int, int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Anchors [N, 4] and per level {L: [H, W, A*4]} for the (padded) input size (numpy)."""
    boxes = anchor_ops.generate_anchors(self.config.anchors, image_size)
    return boxes, anchor_ops.unpack_levels(boxes, self.config.anchors, image_size)

  def init(self, rng: Array, image_size: tuple[int, int]) -> base.Variables:
    variables = self.module.init(rng, *maskrcnn_model.init_inputs(image_size))
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  def _proposals(self, scores: dict, deltas: dict, per_level: dict, canvas: Array,
                 train: bool) -> Array:
    p = self.proposal_config
    rois, _ = proposals.multilevel_propose_rois(
        jax.lax.stop_gradient(scores), jax.lax.stop_gradient(deltas), per_level, canvas,
        pre_nms_top_k=p.pre_nms_top_k if train else p.test_pre_nms_top_k,
        post_nms_top_k_per_level=p.post_nms_top_k, nms_iou_threshold=p.nms_iou_threshold,
        total_top_k=p.post_nms_top_k)
    return jax.lax.stop_gradient(rois)

  def loss(self, variables: base.Variables, batch: Mapping[str, Array],
           rngs: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array], Any]:
    """The five official loss terms ('rpn_score_loss', 'rpn_box_loss', 'fast_rcnn_class_loss',
    'fast_rcnn_box_loss', 'mask_loss'); metrics: foreground RoIs and positive anchors per image.

    `batch` needs 'images', 'image_info', 'gt_boxes' [B, G, 4], 'gt_classes' [B, G] (-1 padding)
    and 'gt_masks' [B, G, 112, 112]; `rngs` 'dropout' and 'sampling'.
    """
    images = batch['images']
    image_size = tuple(images.shape[1:3])
    flat_anchors, per_level = self.anchors(image_size)
    rpn_key, roi_key = jax.random.split(rngs['sampling'])
    gt_boxes, gt_classes = batch['gt_boxes'], batch['gt_classes']
    s = self.sampler_config

    def forward(model: MaskRCNN):
      features, scores, deltas = model.backbone_and_rpn(images, train=True)
      rois = self._proposals(scores, deltas, per_level, batch['image_info'][:, 1, :], True)
      samples = roi_sampler.sample_rois(
          roi_key, rois, gt_boxes, gt_classes, s.num_samples_per_image, s.fg_fraction,
          s.fg_iou_threshold, s.bg_iou_threshold_hi, s.bg_iou_threshold_lo, s.mix_gt_boxes)
      class_outputs, box_outputs = model.box_head(features, samples.rois, train=True)
      masks = mask_targets.sample_and_crop_foreground_masks(
          samples.rois, samples.gt_boxes, samples.classes, samples.gt_indices, batch['gt_masks'],
          s.num_mask_samples_per_image, self.config.mask_head.mask_target_size)
      mask_outputs = model.mask_head(features, masks.rois, masks.classes, train=True)
      return ({'rpn_scores': scores, 'rpn_boxes': deltas, 'class_outputs': class_outputs,
               'box_outputs': box_outputs, 'mask_outputs': mask_outputs},
              {'class_targets': samples.classes, 'box_targets': samples.box_targets,
               'mask_targets': jax.lax.stop_gradient(masks.masks), 'mask_classes': masks.classes})

    (outputs, targets), updates = self.module.apply(
        variables, method=forward, mutable=['batch_stats'], rngs={'dropout': rngs['dropout']})
    p = self.proposal_config
    labels = rpn_targets.label_rpn_batch(rpn_key, jnp.asarray(flat_anchors), gt_boxes, gt_classes,
                                         p.match_threshold, p.unmatched_threshold,
                                         p.batch_size_per_im, p.fg_fraction)
    targets['rpn_score_targets'], targets['rpn_box_targets'] = rpn_targets.unpack_levels(
        labels, self.config.anchors, image_size)
    terms = losses.maskrcnn_loss(outputs, targets, self.loss_config)
    metrics = {'foreground_rois': jnp.mean(jnp.sum(targets['class_targets'] > 0, axis=1)),
               'positive_anchors': jnp.mean(jnp.sum(labels.score_targets == 1, axis=1))}
    return terms, metrics, updates['batch_stats']

  def detect(self, variables: base.Variables, batch: Mapping[str, Array]) -> dict[str, Array]:
    images = batch['images']
    _, per_level = self.anchors(tuple(images.shape[1:3]))
    canvas = batch['image_info'][:, 1, :]       # the output size, as the official generator clips

    def forward(model: MaskRCNN):
      features, scores, deltas = model.backbone_and_rpn(images)
      rois = self._proposals(scores, deltas, per_level, canvas, False)
      class_outputs, box_outputs = model.box_head(features, rois)
      detections = postprocess.generate_roi_detections(class_outputs, box_outputs, rois, canvas,
                                                       self.detection_config)
      logits = model.mask_head(features, detections['detection_boxes'],
                               detections['detection_classes'])
      return dict(detections, detection_masks=jax.nn.sigmoid(logits))

    return self.module.apply(variables, method=forward)

  def checkpoint_names(self, fmt: str, params: Mapping, **options) -> dict[str, tuple[str, tuple]]:
    raise NotImplementedError('Mask R-CNN checkpoint names are not mapped yet (issue: official '
                              'Mask R-CNN checkpoints in).')

  def summary(self, image_size: tuple[int, int]) -> dict[str, Any]:
    """Parameters and batch-norm statistics of the whole model, and GMACs per image at inference:
    'gmacs' = backbone and RPN ('backbone_rpn_gmacs') + the Fast R-CNN head on the test-time
    proposals (`test_proposals`, post_nms_top_k: 1000) + the mask head on the detections
    (`test_detections`, max_total_size: 100), as MODEL_ZOO counts them (49 at 640: 215.4 G here,
    MODEL_ZOO 215.7).
    RoIAlign gathers, proposals and NMS are not multiply-adds and are not counted."""
    images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: self.init(jax.random.key(0), tuple(image_size)))
    module = self.module
    macs = summary_lib.count_macs(
        lambda v, x: module.apply(v, x, method='backbone_and_rpn'), variables, images)
    features = jax.eval_shape(
        lambda v, x: module.apply(v, x, method='backbone_and_rpn'), variables, images)[0]

    def head_gmacs(method: str, num_rois: int, *extra) -> float:
      rois = jax.ShapeDtypeStruct((1, num_rois, 4), jnp.float32)
      return summary_lib.count_macs(
          lambda v, f, r, *e: module.apply(v, f, r, *e, method=method),
          variables, features, rois, *extra) / 1e9

    test_proposals = self.proposal_config.post_nms_top_k
    test_detections = self.detection_config.max_total_size
    classes = jax.ShapeDtypeStruct((1, test_detections), jnp.int32)
    box_head = head_gmacs('box_head', test_proposals)
    mask_head = head_gmacs('mask_head', test_detections, classes)
    backbone = factory.build_backbone_from(self.config.backbone, self.dtype)
    return {'image_size': list(image_size),
            'backbone_params': summary_lib.count_leaves(variables['params']['backbone']),
            'total_params': summary_lib.count_leaves(variables['params']),
            'batch_norm_statistics': summary_lib.count_leaves(variables['batch_stats']),
            'gmacs': macs / 1e9 + box_head + mask_head,
            'backbone_rpn_gmacs': macs / 1e9,
            'box_head_gmacs': box_head, 'test_proposals': test_proposals,
            'mask_head_gmacs': mask_head, 'test_detections': test_detections,
            'backbone_gmacs': summary_lib.summarize(backbone, image_size)['gmacs']}
