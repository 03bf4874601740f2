"""SpineNet-49 Mask R-CNN at 640x640, protocol B, the committed official yaml
(spinenet49_mrcnn.yaml): scale jitter [0.5, 2.0], 350 epochs (162,050 steps), relu, no stochastic
depth, no clipping, BN 0.99 / 1e-3.
Command:  python main.py --config=configs/maskrcnn_spinenet49_b.py --workdir=DIR \
              --config.data.source=coco_folder --config.data.folder_name=coco \
              --config.data.train_images=COCO/train2017 \
              --config.data.train_annotations=COCO/annotations/instances_train2017.json \
              --config.data.eval_images=COCO/val2017 \
              --config.data.eval_annotations=COCO/annotations/instances_val2017.json
Smoke:    python main.py --config=configs/maskrcnn_spinenet49_b.py \
              --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet.
Expected: COCO val2017: MODEL_ZOO box AP 42.8 / mask AP 37.8 (maskrcnn/spinenet-49.tar.gz); yaml
          comment 42.93 / 38.07.
          40,753,521 parameters (= the official graph).
"""

from configs import maskrcnn_spinenet49, protocols


def get_config():
  config = maskrcnn_spinenet49.get_config()
  return protocols.maskrcnn_b(config)
