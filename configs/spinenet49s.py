"""SpineNet-49S RetinaNet at 640x640: the model settings of the official
spinenet49S_retinanet.yaml (swish, stochastic depth, BN momentum 0.997 / epsilon 1e-4).

Inspect:  python tools/summarize_model.py --config=configs/spinenet49s.py
Expected: 11,265,942 trainable parameters (9,089,215 in the backbone), equal to the official
          TF graph; 30.8 G multiply-adds per image (MODEL_ZOO: params and "FLOPs" of this model).
          CPU, seconds: the model is traced abstractly.
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '49S'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (640, 640)
  config.model.head.num_filters = 128
  return config
