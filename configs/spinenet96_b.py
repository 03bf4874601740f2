"""SpineNet-96 RetinaNet at 1024x1024, protocol B: scale jitter [0.5, 2.0], 350 epochs, relu, no
stochastic depth (the header-comment recipe of the official yaml).
Command:  python main.py --config=configs/spinenet96_b.py --workdir=gs://BUCKET/spinenet96_b \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet96_b.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: paper 47.1 AP; MODEL_ZOO 46.7 (retinanet/spinenet-96.tar.gz). 43.0M
          parameters.
"""

from configs import protocols, spinenet96


def get_config():
  config = spinenet96.get_config()
  return protocols.protocol_b(config)
