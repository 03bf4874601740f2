"""SpineNet-49S Mask R-CNN at 640x640 (official spinenet49s_mrcnn.yaml: 128-filter heads, FC 512).

Inspect:  python tools/summarize_model.py --config=configs/maskrcnn_spinenet49s.py
Expected: 13,946,608 trainable parameters, equal to the official TF graph (yaml comment: box AP
          39.3 / mask AP 34.8). CPU, seconds.
"""

from configs import maskrcnn_spinenet49


def get_config():
  config = maskrcnn_spinenet49.get_config()
  config.model.backbone.model_id = '49S'
  for head in ('rpn_head', 'frcnn_head', 'mask_head'):
    config.model[head].num_filters = 128
  config.model.frcnn_head.fc_dims = 512
  return config
