"""SpineNet-143 at 1280x1280: the model settings of the official spinenet143_retinanet.yaml.

Inspect:  python tools/summarize_model.py --config=configs/spinenet143.py
Expected: backbone 60,247,616 trainable parameters (equal to the official TF graph), about
          295.3 G multiply-adds for the backbone at 1280x1280 (CPU, seconds).
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '143'
  config.model.backbone.init_drop_connect_rate = 0.16
  config.input.image_size = (1280, 1280)
  return config
