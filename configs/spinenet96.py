"""SpineNet-96 at 1024x1024: the model settings of the official spinenet96_retinanet.yaml.

Inspect:  python tools/summarize_model.py --config=configs/spinenet96.py
Expected: backbone 36,262,976 trainable parameters (equal to the official TF graph), about
          119.1 G multiply-adds for the backbone at 1024x1024 (CPU, seconds).
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '96'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (1024, 1024)
  return config
