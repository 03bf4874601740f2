"""SpineNet-143 RetinaNet at 1280x1280, protocol C: scale jitter [0.5, 2.0], 500 epochs, stochastic
depth, swish (the committed official yaml).

As the official 143 yaml: scale jitter [0.1, 1.9], stochastic depth 0.16.
Command:  python main.py --config=configs/spinenet143_c.py --workdir=gs://BUCKET/spinenet143_c \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet143_c.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: MODEL_ZOO 50.6 AP, paper 50.7 (retinanet/spinenet-143-best.tar.gz).
          67.0M parameters.
"""

from configs import protocols, spinenet143


def get_config():
  config = spinenet143.get_config()
  return protocols.protocol_c(config, scale=(0.1, 1.9))
