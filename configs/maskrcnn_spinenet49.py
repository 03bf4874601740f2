"""SpineNet-49 Mask R-CNN at 640x640: the model and training settings of the official
spinenet49_mrcnn.yaml (relu, BN momentum 0.99 / epsilon 1e-3, levels 3-7, one-conv RPN, Fast
R-CNN 4 convs + 1 FC, mask head 4 convs, anchor size 3, 162050 steps at batch 256, no clipping).

Inspect:  python tools/summarize_model.py --config=configs/maskrcnn_spinenet49.py
Expected: 40,753,521 trainable parameters (21,831,488 in the backbone), equal to the official
          TF graph (MODEL_ZOO: 40.8M; box AP 42.9 / mask AP 38.1 in the yaml's comment).
          CPU, seconds: the model is traced abstractly.
Train:    configs/maskrcnn_spinenet49_b.py (this recipe) and the other protocol configs, on COCO's
          own folder and instances jsons (TFDS coco/2017 holds no masks); docs/training.md.
The other Mask R-CNN configs override this file.
"""

import ml_collections

from configs import base


def get_config():
  config = base.get_config()
  config.model.type = 'maskrcnn'
  del config.model['head']           # RetinaNet's; Mask R-CNN has its own heads below
  config.model.norm.momentum = 0.99
  config.model.norm.epsilon = 1e-3
  b = config.model.backbone
  b.model_id = '49'
  b.activation = 'relu'
  config.model.num_classes = 91      # COCO ids 1..90 plus background column 0, as official
  config.model.anchors = ml_collections.ConfigDict(dict(
      num_scales=1, aspect_ratios=(1.0, 2.0, 0.5), anchor_size=3.0))
  config.model.rpn_head = ml_collections.ConfigDict(dict(num_convs=1, num_filters=256))
  config.model.frcnn_head = ml_collections.ConfigDict(dict(
      num_convs=4, num_filters=256, num_fcs=1, fc_dims=1024))
  config.model.mask_head = ml_collections.ConfigDict(dict(
      num_convs=4, num_filters=256, mask_target_size=28))
  # Official `anchor` / `roi_proposal` / `roi_sampling` / `mask_sampling` params.
  config.rpn = ml_collections.ConfigDict(dict(
      match_threshold=0.7, unmatched_threshold=0.3, batch_size_per_im=256, fg_fraction=0.5,
      pre_nms_top_k=2000, test_pre_nms_top_k=1000, post_nms_top_k=1000, nms_iou_threshold=0.7))
  config.roi_sampler = ml_collections.ConfigDict(dict(
      num_samples_per_image=512, fg_fraction=0.25, fg_iou_threshold=0.5,
      bg_iou_threshold_hi=0.5, bg_iou_threshold_lo=0.0, mix_gt_boxes=True,
      num_mask_samples_per_image=128))
  config.loss = ml_collections.ConfigDict(dict(
      rpn_huber_delta=1.0 / 9.0, frcnn_huber_delta=1.0,
      normalizer_group_size=ml_collections.FieldReference(8, field_type=int),
      l2_weight_decay=4e-5))
  config.postprocess.pre_nms_num_boxes = 1000
  config.input.include_masks = True
  config.input.mask_crop_size = 112
  t = config.train
  t.total_steps = 162050
  t.learning_rate_steps = (148160, 157420)
  t.gradient_clip_norm = 0.0         # the Mask R-CNN yamls do not clip
  t.gradient_clip_mode = 'global'
  return config
