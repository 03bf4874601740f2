"""SpineNet-49 at 640x640: the model settings of the official spinenet49_retinanet.yaml.

Inspect:  python tools/summarize_model.py --config=configs/spinenet49.py
Expected: backbone 21,831,488 trainable parameters (equal to the official TF graph), about
          28.3 G multiply-adds for the backbone at 640x640 (CPU, seconds).
Training recipes (protocols A/B/C) build on this file.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.backbone.model_id = '49'
  config.model.backbone.init_drop_connect_rate = 0.2
  config.input.image_size = (640, 640)
  return config
