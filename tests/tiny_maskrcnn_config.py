"""A tiny Mask R-CNN config for tests: configs/maskrcnn_spinenet49s.py at 128x128 with an eighth
of SpineNet-49S's filters, 8-filter heads and a small synthetic dataset with masks.

  python main.py --config=tests/tiny_maskrcnn_config.py --workdir=DIR
Expected: losses fall on the synthetic shapes (tests/test_maskrcnn_training.py).
"""

from configs import maskrcnn_spinenet49s


def get_config():
  config = maskrcnn_spinenet49s.get_config()
  b = config.model.backbone
  b.filter_size_scale = 0.125
  b.endpoints_num_filters = 16
  # swish (as the 190 yaml): relu's kinks turn 1-ulp differences of sharded batch-norm sums into
  # different masks in this 8-filter network, so 1 and 8 devices would drift apart after a step.
  b.activation = 'swish'
  for head in ('rpn_head', 'frcnn_head', 'mask_head'):
    config.model[head].num_filters = 8
    config.model[head].num_convs = 1
  config.model.frcnn_head.fc_dims = 32
  config.input.image_size = (128, 128)
  config.input.max_num_instances = 8
  config.input.mask_crop_size = 112
  config.roi_sampler.num_samples_per_image = 64
  config.roi_sampler.num_mask_samples_per_image = 16
  config.rpn.pre_nms_top_k = 200
  config.rpn.test_pre_nms_top_k = 100
  config.rpn.post_nms_top_k = 100
  config.postprocess.max_total_size = 20
  config.postprocess.pre_nms_num_boxes = 100
  config.data.source = 'synthetic'
  config.data.train_split, config.data.eval_split = 'train', 'val'
  config.data.synthetic_num_images = 24
  config.data.shuffle_buffer = 32
  config.loss.normalizer_group_size = 4
  t = config.train
  t.global_batch_size = 8
  t.total_steps = 6
  t.warmup_steps = 2
  t.init_learning_rate = 0.02
  t.learning_rate_levels = (0.002, 0.0002)
  t.learning_rate_steps = (4, 5)
  t.log_every_steps = 2
  t.checkpoint_every_steps = 2
  config.eval.batch_size = 8
  config.eval.num_images = 8
  return config
