"""SpineNet-190 Mask R-CNN at 1536x1536 (official spinenet190_mrcnn.yaml: swish, stochastic depth
0.2, scale jitter 0.1-2.0, anchor size 5, 7-conv x 384-filter heads, 187600 steps).

Inspect:  python tools/summarize_model.py --config=configs/maskrcnn_spinenet190.py
Expected: 176,198,465 trainable parameters, equal to the official TF graph; the released
          checkpoint has a one-conv RPN (--config.model.rpn_head.num_convs=1: 168,210,497).
          Yaml comment: 52.0 mAP. CPU, seconds.
"""

from configs import maskrcnn_spinenet49


def get_config():
  config = maskrcnn_spinenet49.get_config()
  b = config.model.backbone
  b.model_id = '190'
  b.activation = 'swish'
  b.init_drop_connect_rate = 0.2
  config.input.image_size = (1536, 1536)
  config.input.aug_scale_min, config.input.aug_scale_max = 0.1, 2.0
  config.model.anchors.anchor_size = 5.0
  for head in ('rpn_head', 'frcnn_head', 'mask_head'):
    config.model[head].num_convs = 7
    config.model[head].num_filters = 384
  t = config.train
  t.total_steps = 187600
  t.learning_rate_steps = (173530, 182910)
  return config
