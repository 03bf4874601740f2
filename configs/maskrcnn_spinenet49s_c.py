"""SpineNet-49S Mask R-CNN at 640x640, protocol C: swish, stochastic depth, scale jitter [0.5, 2.0],
500 epochs, no clipping (RetinaNet's committed recipe; no official Mask R-CNN yaml).
Command:  python main.py --config=configs/maskrcnn_spinenet49s_c.py --workdir=DIR \
              --config.data.source=coco_folder --config.data.folder_name=coco \
              --config.data.train_images=COCO/train2017 \
              --config.data.train_annotations=COCO/annotations/instances_train2017.json \
              --config.data.eval_images=COCO/val2017 \
              --config.data.eval_annotations=COCO/annotations/instances_val2017.json
Smoke:    python main.py --config=configs/maskrcnn_spinenet49s_c.py \
              --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet.
Expected: COCO val2017: no box or mask AP reported for this protocol (paper, MODEL_ZOO).
          13,946,608 parameters (= the official graph).
"""

from configs import maskrcnn_spinenet49s, protocols


def get_config():
  config = maskrcnn_spinenet49s.get_config()
  return protocols.maskrcnn_c(config)
