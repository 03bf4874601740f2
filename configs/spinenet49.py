"""SpineNet-49 RetinaNet at 640x640: the model settings of the official
spinenet49_retinanet.yaml (swish, stochastic depth, BN momentum 0.997 / epsilon 1e-4).

Inspect:  python tools/summarize_model.py --config=configs/spinenet49.py
Expected: 28,543,383 trainable parameters (21,831,488 in the backbone), equal to the official
          TF graph; 85.3 G multiply-adds per image (MODEL_ZOO: params and "FLOPs" of this model).
          CPU, seconds: the model is traced abstractly.
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '49'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (640, 640)
  return config
