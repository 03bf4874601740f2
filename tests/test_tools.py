"""Command-line tools and config files."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from spinenet_jax.modeling import factory
from spinenet_jax.modeling.layers import NormConfig
from spinenet_jax.modeling.spinenet import SpineNetConfig


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
# The official SCALING_MAP (endpoints_num_filters, filter_size_scale, resample_alpha, block_repeats)
# as the reference spec lists it (official-tpu-detection.md, section 1.1).
OFFICIAL_SCALING = {'49S': (128, 0.65, 0.5, 1), '49': (256, 1.0, 0.5, 1), '96': (256, 1.0, 0.5, 2),
                    '143': (256, 1.0, 1.0, 3), '190': (512, 1.3, 1.0, 4)}
# The official SPINENET_BLOCK_SPECS (level, block_fn, input offsets, is_output), same section.
OFFICIAL_SPECS = [(2, 'bottleneck', (0, 1), False), (4, 'residual', (0, 1), False),
                  (3, 'bottleneck', (2, 3), False), (4, 'bottleneck', (2, 4), False),
                  (6, 'residual', (3, 5), False), (4, 'bottleneck', (3, 5), False),
                  (5, 'residual', (6, 7), False), (7, 'residual', (6, 8), False),
                  (5, 'bottleneck', (8, 9), False), (5, 'bottleneck', (8, 10), False),
                  (4, 'bottleneck', (5, 10), True), (3, 'bottleneck', (4, 10), True),
                  (5, 'bottleneck', (7, 12), True), (7, 'bottleneck', (5, 14), True),
                  (6, 'bottleneck', (12, 14), True)]


@pytest.mark.parametrize('name, model_id, size, rate', [
    ('spinenet49s', '49S', 640, 0.2), ('spinenet49', '49', 640, 0.2), ('spinenet96', '96', 1024, 0.2),
    ('spinenet143', '143', 1280, 0.16), ('spinenet190', '190', 1280, 0.2)])
def test_model_configs(name, model_id, size, rate):
  from spinenet_jax.analysis import summary
  config = load_config(name)
  model = factory.model_from_config(factory.retinanet_config(config.model))
  result = summary.summarize(model, tuple(config.input.image_size),
                             backbone_collection_key='backbone')
  assert result['total_params'] == OFFICIAL_RETINANET_PARAMS[model_id]
  assert result['gmacs'] == pytest.approx(OFFICIAL_GMACS[model_id], rel=0.005)
  retinanet = factory.retinanet_config(config.model)
  assert retinanet.anchors.anchor_size == (4.0 if model_id in ('143', '190') else 3.0)
  backbone = factory.backbone_config(config.model)
  assert config.input.image_size == (size, size)
  # The whole backbone config equals one written out from the official yaml settings and scaling.
  endpoints, scale, alpha, repeats = OFFICIAL_SCALING[model_id]
  expected = SpineNetConfig(
      block_specs=OFFICIAL_SPECS, min_level=3, max_level=7, endpoints_num_filters=endpoints,
      filter_size_scale=scale, resample_alpha=alpha, block_repeats=repeats, activation='swish',
      conv_padding='fixed', resample_pooling='official', use_native_resize_op=False,
      norm=NormConfig(type='batch', momentum=0.997, epsilon=1e-4), init_drop_connect_rate=rate,
      dropblock_keep_prob=None, dropblock_size=None)
  assert backbone == expected


def test_config_block_specs_and_dtype():
  config = load_config('spinenet49')
  config.model.backbone.block_specs = [[2, 'bottleneck', [0, 1], False]] * 2
  with pytest.raises(ValueError, match='no output block for level'):
    factory.backbone_config(config.model)
  config.model.backbone.block_specs = None
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="config.model.dtype must be one of"):
    factory.build_backbone(config.model)
