"""Mask R-CNN through main.py: synthetic data with masks, training, evaluation, predict."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_train_and_eval_then_predict(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  base = [sys.executable, 'main.py', '--config=tests/tiny_maskrcnn_config.py',
          f'--workdir={tmp_path}', '--config.train.total_steps=2']
  proc = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert 'Training maskrcnn' in proc.stderr and 'mask_loss' in proc.stderr
  metrics = json.loads((tmp_path / 'eval' / 'metrics_2.json').read_text())
  assert metrics['num_images'] == 8 and 'AP' in metrics and 'segm/AP' in metrics
  assert len(metrics) == 2 + 2 * 12                  # box and mask metrics, step, num_images
  with open(tmp_path / 'model' / 'model.json') as f:
    assert json.load(f)['model']['type'] == 'maskrcnn'
  images = tmp_path / 'synthetic' / 'val' / 'images'
  # Score threshold 0: two steps of training score few boxes above the official 0.05.
  proc = subprocess.run([*base, '--mode=predict', f'--config.predict.input_dir={images}',
                         '--config.postprocess.score_threshold=0.0',
                         f'--config.init_checkpoint={tmp_path / "model"}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  predicted = json.loads((tmp_path / 'predictions' / 'images.json').read_text())
  assert len(predicted) == len(os.listdir(images))
  detections = json.loads((tmp_path / 'predictions' / 'detections.json').read_text())
  assert detections and all(d['segmentation']['size'] == [
      predicted[d['image_id'] - 1]['height'], predicted[d['image_id'] - 1]['width']]
      for d in detections)
