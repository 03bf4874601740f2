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
  assert summary['backbone_params'] == 21_831_488
  assert summary['total_params'] == 28_543_383
  assert summary['image_size'] == [640, 640]
  assert summary['gmacs'] == pytest.approx(85.3, rel=0.005)      # MODEL_ZOO "FLOPs" (multiply-adds)
  # The backbone alone: the notebook's block table totals equal this (tests/test_block_table.py).
  assert summary['backbone_gmacs'] == pytest.approx(28.26, abs=0.01)
  # Backbone BN (88,704) + head BN: 2 towers x 4 convs x 5 levels x (mean, var) x 256.
  assert summary['batch_norm_statistics'] == 88_704 + 2 * 4 * 5 * 2 * 256


def test_summarize_model_table_with_overrides():
  result = run_tool('summarize_model.py', '--config=configs/spinenet49s.py', '--image_size=384,640',
                    '--config.model.backbone.endpoints_num_filters=256')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'backbone trainable parameters  9,472,959' in result.stdout   # 9,089,215 + 383,744
  # The MODEL_ZOO's 11.9M for 49S: 256-channel endpoints feed wider first head convs.
  assert 'total trainable parameters     11,944,598' in result.stdout
  assert 'input size                     384x640' in result.stdout


def test_summarize_model_rejects_bad_size_and_typos():
  bad = run_tool('summarize_model.py', '--config=configs/spinenet49.py', '--image_size=640')
  assert bad.returncode != 0 and '--image_size must be H,W' in bad.stderr
  typo = run_tool('summarize_model.py', '--config=configs/spinenet49.py',
                  '--config.model.backbone.modelid=96')
  assert typo.returncode != 0 and 'modelid' in typo.stderr


OFFICIAL_RETINANET_PARAMS = {'49S': 11_265_942, '49': 28_543_383, '96': 42_974_871,
                             '143': 66_959_511, '190': 163_637_351}
OFFICIAL_GMACS = {'49S': 30.8, '49': 85.3, '96': 265.0, '143': 523.3, '190': 1881.7}


@pytest.mark.parametrize('name, model_id, size, rate', [
    ('spinenet49s', '49S', 640, 0.2), ('spinenet49', '49', 640, 0.2), ('spinenet96', '96', 1024, 0.2),
    ('spinenet143', '143', 1280, 0.16), ('spinenet190', '190', 1280, 0.2)])
def test_model_configs(name, model_id, size, rate):
  from spinenet_jax.analysis import summary
  config = load_config(name)
  result = summary.summarize(factory.build_model(config.model), tuple(config.input.image_size),
                             backbone_collection_key='backbone')
  assert result['total_params'] == OFFICIAL_RETINANET_PARAMS[model_id]
  assert result['gmacs'] == pytest.approx(OFFICIAL_GMACS[model_id], rel=0.005)
  retinanet = factory.retinanet_config(config.model)
  assert retinanet.anchors.anchor_size == (4.0 if model_id in ('143', '190') else 3.0)
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
