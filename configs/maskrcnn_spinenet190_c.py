"""SpineNet-190 Mask R-CNN at 1536x1536, protocol C, the committed official yaml
(spinenet190_mrcnn.yaml): swish, stochastic depth 0.2, scale jitter [0.1, 2.0], 406 epochs (187,600
steps), no clipping.
Command:  python main.py --config=configs/maskrcnn_spinenet190_c.py --workdir=DIR \
              --config.data.source=coco_folder --config.data.folder_name=coco \
              --config.data.train_images=COCO/train2017 \
              --config.data.train_annotations=COCO/annotations/instances_train2017.json \
              --config.data.eval_images=COCO/val2017 \
              --config.data.eval_annotations=COCO/annotations/instances_val2017.json
Smoke:    python main.py --config=configs/maskrcnn_spinenet190_c.py \
              --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet.
Expected: COCO val2017: MODEL_ZOO box AP 52.0 / mask AP 45.9 (maskrcnn/spinenet-190.tar.gz,
          trained with a one-conv RPN: --config.model.rpn_head.num_convs=1).
          176,198,465 parameters (= the official graph).
"""

from configs import maskrcnn_spinenet190


def get_config():
  config = maskrcnn_spinenet190.get_config()
  return config                      # the model config is the yaml
