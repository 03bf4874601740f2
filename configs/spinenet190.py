"""SpineNet-190 RetinaNet at 1280x1280: the model settings of the official
spinenet190_retinanet.yaml (swish, stochastic depth, BN momentum 0.997 / epsilon 1e-4).

Inspect:  python tools/summarize_model.py --config=configs/spinenet190.py
Expected: 163,637,351 trainable parameters (126,587,664 in the backbone), equal to the official
          TF graph; 1881.7 G multiply-adds per image (MODEL_ZOO: params and "FLOPs" of this model).
          CPU, seconds: the model is traced abstractly.
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '190'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (1280, 1280)
  config.model.head.num_convs = 7
  config.model.head.num_filters = 512
  config.model.anchors.anchor_size = 4.0
  return config
