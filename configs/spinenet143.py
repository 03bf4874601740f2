"""SpineNet-143 RetinaNet at 1280x1280: the model settings of the official
spinenet143_retinanet.yaml (swish, stochastic depth, BN momentum 0.997 / epsilon 1e-4).

Inspect:  python tools/summarize_model.py --config=configs/spinenet143.py
Expected: 66,959,511 trainable parameters (60,247,616 in the backbone), equal to the official
          TF graph; 523.3 G multiply-adds per image (MODEL_ZOO: params and "FLOPs" of this model).
          CPU, seconds: the model is traced abstractly.
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '143'
  config.model.backbone.init_drop_connect_rate = 0.16
  config.input.image_size = (1280, 1280)
  config.model.anchors.anchor_size = 4.0
  return config
