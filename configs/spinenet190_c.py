"""SpineNet-190 RetinaNet at 1280x1280, protocol C: scale jitter [0.5, 2.0], 500 epochs, stochastic
depth, swish (the committed official yaml).

As the official 190 yaml: 400 epochs (185,200 steps, decays at 171,310 / 180,570), LR 0.3,
scale jitter [0.1, 1.9].
Command:  python main.py --config=configs/spinenet190_c.py --workdir=gs://BUCKET/spinenet190_c \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet190_c.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: paper and MODEL_ZOO 52.0 AP (retinanet/spinenet-190-best.tar.gz).
          163.6M parameters.
"""

from configs import protocols, spinenet190


def get_config():
  config = spinenet190.get_config()
  return protocols.protocol_c(config, scale=(0.1, 1.9), total=185200,
                              decay_steps=(171310, 180570), lr=0.3)
