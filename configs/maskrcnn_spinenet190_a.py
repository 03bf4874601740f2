"""SpineNet-190 Mask R-CNN at 1536x1536, protocol A: scale jitter [0.8, 1.2], 250 epochs, DropBlock,
relu, no stochastic depth, no clipping (the paper's text; no official Mask R-CNN yaml or result).
Command:  python main.py --config=configs/maskrcnn_spinenet190_a.py --workdir=DIR \
              --config.data.source=coco_folder --config.data.folder_name=coco \
              --config.data.train_images=COCO/train2017 \
              --config.data.train_annotations=COCO/annotations/instances_train2017.json \
              --config.data.eval_images=COCO/val2017 \
              --config.data.eval_annotations=COCO/annotations/instances_val2017.json
Smoke:    python main.py --config=configs/maskrcnn_spinenet190_a.py \
              --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet.
Expected: COCO val2017: no box or mask AP reported for this protocol (paper, MODEL_ZOO).
          176,198,465 parameters (= the official graph).
"""

from configs import maskrcnn_spinenet190, protocols


def get_config():
  config = maskrcnn_spinenet190.get_config()
  return protocols.maskrcnn_a(config)
