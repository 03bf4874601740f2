"""Demo: a small SpineNet-49S Mask R-CNN learning the embedded synthetic dataset's masks on a CPU.

Command (a fresh machine, no download):
  python main.py --config=configs/demo_maskrcnn.py --workdir=/tmp/spinenet_demo_maskrcnn
Hardware: 2 CPU cores.
Expected: measured (2026-11-30): 21.3 minutes wall, data generation and compilation included; mask
AP 0.36, AP50 0.58 and box AP 0.41, AP50 0.60 on the synthetic validation split (64 images)
(docs/demo.md has the curve). The target: mask AP50 >= 0.5 within 25 minutes, deterministic.
900 steps at 128x128, then 200 at 256x256 (progressive resizing; evaluation at 256x256).
Shapes of six categories (ids 1, 2, 3, 5, 7, 8: 9 class outputs), 96-320 px images at 256x256,
with their exact masks.
"""

from configs import maskrcnn_spinenet49s


def get_config():
  config = maskrcnn_spinenet49s.get_config()
  b = config.model.backbone
  b.filter_size_scale = 0.125
  b.endpoints_num_filters = 64
  b.block_repeats = 1
  b.activation = 'swish'
  config.model.num_classes = 9
  config.model.anchors.anchor_size = 2.0    # 16 px anchors at level 3 for the tiny shapes
  config.model.rpn_head.num_filters = 64
  config.model.frcnn_head.num_convs = 1
  config.model.frcnn_head.num_filters = 32
  config.model.frcnn_head.fc_dims = 256
  config.model.mask_head.num_convs = 2
  config.model.mask_head.num_filters = 32

  config.input.image_size = (256, 256)
  config.input.aug_scale_min = 0.8
  config.input.aug_scale_max = 1.25
  config.input.max_num_instances = 32
  config.input.mask_crop_size = 56
  config.rpn.pre_nms_top_k = 1000
  config.rpn.post_nms_top_k = 300
  config.rpn.test_pre_nms_top_k = 500
  config.roi_sampler.num_samples_per_image = 64
  config.roi_sampler.num_mask_samples_per_image = 16
  config.postprocess.pre_nms_num_boxes = 300
  config.data.source = 'synthetic'
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.shuffle_buffer = 256

  t = config.train
  t.global_batch_size = 16
  t.total_steps = 1100
  t.low_res_steps = 900                     # progressive resizing: cheaper steps at 128x128
  t.low_res_image_size = (128, 128)
  t.init_learning_rate = 0.12
  t.warmup_steps = 100
  t.warmup_learning_rate = 0.0067
  t.learning_rate_steps = (960, 1050)
  t.learning_rate_levels = (0.012, 0.0012)
  t.gradient_clip_norm = 10.0
  t.log_every_steps = 50
  t.checkpoint_every_steps = 100
  config.eval.batch_size = 16
  config.eval.save_detections = True
  return config
