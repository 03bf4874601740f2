"""SpineNet-143 RetinaNet at 1280x1280, protocol B: scale jitter [0.5, 2.0], 350 epochs, relu, no
stochastic depth (the header-comment recipe of the official yaml).

The header comment of the official 143 yaml uses scale jitter [0.5, 2.0] for this recipe too.
Command:  python main.py --config=configs/spinenet143_b.py --workdir=gs://BUCKET/spinenet143_b \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet143_b.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: paper 48.1 AP; MODEL_ZOO 48.0 (retinanet/spinenet-143.tar.gz). 67.0M
          parameters.
"""

from configs import protocols, spinenet143


def get_config():
  config = spinenet143.get_config()
  return protocols.protocol_b(config)
