"""SpineNet-96 RetinaNet at 1024x1024: the model settings of the official
spinenet96_retinanet.yaml (swish, stochastic depth, BN momentum 0.997 / epsilon 1e-4).

Inspect:  python tools/summarize_model.py --config=configs/spinenet96.py
Expected: 42,974,871 trainable parameters (36,262,976 in the backbone), equal to the official
          TF graph; 265.0 G multiply-adds per image (MODEL_ZOO: params and "FLOPs" of this model).
          CPU, seconds: the model is traced abstractly.
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '96'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (1024, 1024)
  return config
