"""Command-line tools and config files."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from spinenet_jax.modeling import factory


def run_tool(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', args[0]), *args[1:]],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_summarize_model_json():
  result = run_tool('summarize_model.py', '--config=configs/spinenet49.py', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['backbone_params'] == 21_831_488 == summary['total_params']
  assert summary['image_size'] == [640, 640]
  # Backbone multiply-adds at 640: the official RetinaNet total (85.3 G) minus its head (~57.0 G).
  assert summary['gmacs'] == pytest.approx(28.26, abs=0.01)
  assert summary['batch_norm_statistics'] == 88_704


def test_summarize_model_table_with_overrides():
  result = run_tool('summarize_model.py', '--config=configs/spinenet49s.py', '--image_size=384,640',
                    '--config.model.backbone.endpoints_num_filters=256')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'backbone trainable parameters  9,472,959' in result.stdout   # 9,089,215 + 383,744
  assert 'input size                     384x640' in result.stdout


def test_summarize_model_rejects_bad_size_and_typos():
  bad = run_tool('summarize_model.py', '--config=configs/spinenet49.py', '--image_size=640')
  assert bad.returncode != 0 and '--image_size must be H,W' in bad.stderr
  typo = run_tool('summarize_model.py', '--config=configs/spinenet49.py',
                  '--config.model.backbone.modelid=96')
  assert typo.returncode != 0 and 'modelid' in typo.stderr


@pytest.mark.parametrize('name, model_id, size, rate', [
    ('spinenet49s', '49S', 640, 0.2), ('spinenet49', '49', 640, 0.2), ('spinenet96', '96', 1024, 0.2),
    ('spinenet143', '143', 1280, 0.16), ('spinenet190', '190', 1280, 0.2)])
def test_model_configs(name, model_id, size, rate):
  config = load_config(name)
  backbone = factory.backbone_config(config.model)
  assert config.input.image_size == (size, size)
  assert backbone.init_drop_connect_rate == rate and backbone.activation == 'swish'
  assert backbone.norm.momentum == 0.997 and backbone.norm.epsilon == 1e-4
  assert backbone.conv_padding == 'fixed' and backbone.resample_pooling == 'official'
  assert backbone == factory.backbone_config(config.model)  # deterministic
  assert backbone.block_repeats == {'49S': 1, '49': 1, '96': 2, '143': 3, '190': 4}[model_id]


def test_config_block_specs_and_dtype():
  config = load_config('spinenet49')
  config.model.backbone.block_specs = [[2, 'bottleneck', [0, 1], False]] * 2
  with pytest.raises(ValueError, match='no output block for level'):
    factory.backbone_config(config.model)
  config.model.backbone.block_specs = None
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="config.model.dtype must be one of"):
    factory.build_backbone(config.model)
