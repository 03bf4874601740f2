"""Every config loads; protocol configs carry the official numbers; the smoke switch shrinks."""

import glob
import importlib
import os

import pytest

from conftest import ROOT
from spinenet_jax.training import settings

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith(('__init__.py', 'protocols.py')))


def load(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_and_passes_checks(name):
  config = load(name)
  settings.finalize(config)
  assert config.train.global_batch_size > 0
  doc = importlib.import_module(f'configs.{name}').__doc__
  if name != 'base':
    assert 'python' in doc and 'Expected' in doc, f'{name}: docstring lacks the command/result'


def test_fifteen_protocol_configs_per_detector():
  protocol = [n for n in CONFIGS if n.endswith(('_a', '_b', '_c'))]
  assert len([n for n in protocol if n.startswith('spinenet')]) == 15
  assert len([n for n in protocol if n.startswith('maskrcnn_spinenet')]) == 15


@pytest.mark.parametrize('model', ['49s', '49', '96', '143', '190'])
def test_maskrcnn_protocols(model):
  """B of 49S-143 and C of 190 are the committed official yamls, i.e. the model configs
  unchanged; no Mask R-CNN protocol clips; A and C follow RetinaNet's protocols."""
  base = load(f'maskrcnn_spinenet{model}').to_dict()
  official = f'maskrcnn_spinenet{model}_{"c" if model == "190" else "b"}'
  assert load(official).to_dict() == base
  for proto in 'abc':
    c = load(f'maskrcnn_spinenet{model}_{proto}')
    assert c.model.type == 'maskrcnn' and c.train.gradient_clip_norm == 0.0
    assert c.model.norm.momentum == 0.99 and c.model.norm.epsilon == 1e-3
    smoke = settings.finalize(_smoke(c))
    assert smoke.data.source == 'synthetic' and smoke.train.total_steps == 6
  a = load(f'maskrcnn_spinenet{model}_a')
  assert (a.train.total_steps, tuple(a.train.learning_rate_steps)) == (115515, (101653, 110894))
  assert (a.input.aug_scale_min, a.input.aug_scale_max) == (0.8, 1.2)
  assert a.model.backbone.activation == 'relu' and a.model.backbone.dropblock_keep_prob == 0.9
  b = load(f'maskrcnn_spinenet{model}_b')
  assert (b.train.total_steps, tuple(b.train.learning_rate_steps)) == (162050, (148160, 157420))
  assert b.model.backbone.activation == 'relu' and b.model.backbone.init_drop_connect_rate is None
  assert (b.input.aug_scale_min, b.input.aug_scale_max) == (0.5, 2.0)
  c = load(f'maskrcnn_spinenet{model}_c')
  assert c.model.backbone.activation == 'swish'
  if model == '190':
    assert (c.train.total_steps, tuple(c.train.learning_rate_steps)) == (187600, (173530, 182910))
    assert (c.input.aug_scale_min, c.input.aug_scale_max) == (0.1, 2.0)
  else:
    assert (c.train.total_steps, tuple(c.train.learning_rate_steps)) == (231500, (217610, 226870))
    rate, scale = (0.16, (0.1, 1.9)) if model == '143' else (0.2, (0.5, 2.0))
    assert c.model.backbone.init_drop_connect_rate == rate
    assert (c.input.aug_scale_min, c.input.aug_scale_max) == scale


def _smoke(config):
  config = config.copy_and_resolve_references()
  config.smoke = True
  return config


@pytest.mark.parametrize('model', ['49s', '49', '96'])
def test_protocol_c_is_the_committed_yaml(model):
  c = load(f'spinenet{model}_c')
  t = c.train
  assert (t.total_steps, t.init_learning_rate, tuple(t.learning_rate_steps)) == (
      231500, 0.28, (217610, 226870))
  assert tuple(t.learning_rate_levels) == pytest.approx((0.028, 0.0028))
  assert (t.warmup_steps, t.warmup_learning_rate, t.gradient_clip_norm, t.global_batch_size) == (
      2000, 0.0067, 10.0, 256)
  assert (c.input.aug_scale_min, c.input.aug_scale_max) == (0.5, 2.0)
  assert c.model.backbone.activation == 'swish' and c.model.backbone.init_drop_connect_rate == 0.2
  assert c.loss.l2_weight_decay == 4e-5


def test_protocol_deviations_143_190():
  c143 = load('spinenet143_c')
  assert (c143.input.aug_scale_min, c143.input.aug_scale_max) == (0.1, 1.9)
  assert c143.model.backbone.init_drop_connect_rate == 0.16
  c190 = load('spinenet190_c')
  assert (c190.train.total_steps, c190.train.init_learning_rate) == (185200, 0.3)
  assert tuple(c190.train.learning_rate_steps) == (171310, 180570)
  assert tuple(c190.train.learning_rate_levels) == pytest.approx((0.03, 0.003))
  assert (c190.input.aug_scale_min, c190.input.aug_scale_max) == (0.1, 1.9)
  assert load('spinenet143_b').input.aug_scale_min == 0.5


@pytest.mark.parametrize('model', ['49s', '49', '96', '143', '190'])
def test_protocols_a_and_b(model):
  b = load(f'spinenet{model}_b')
  assert (b.train.total_steps, tuple(b.train.learning_rate_steps)) == (162050, (148160, 157420))
  assert b.model.backbone.activation == 'relu' and b.model.backbone.init_drop_connect_rate is None
  assert (b.input.aug_scale_min, b.input.aug_scale_max) == (0.5, 2.0)
  a = load(f'spinenet{model}_a')
  # 250 epochs of COCO train2017 at batch 256; decays at 220 and 240 epochs.
  assert (a.train.total_steps, tuple(a.train.learning_rate_steps)) == (115515, (101653, 110894))
  assert (a.input.aug_scale_min, a.input.aug_scale_max) == (0.8, 1.2)
  assert a.model.backbone.dropblock_keep_prob == 0.9 and a.model.backbone.dropblock_size == 7


def test_smoke_switch_shrinks_any_config():
  config = load('spinenet190_c')
  config.smoke = True
  small = settings.finalize(config)
  assert small.model.backbone.model_id == '190' and small.model.backbone.block_repeats == 1
  assert small.model.backbone.filter_size_scale == pytest.approx(0.25 * 1.3)
  assert tuple(small.input.image_size) == (256, 256) and small.data.source == 'synthetic'
  assert small.train.total_steps == 6 and list(small.train.learning_rate_steps) == [6, 6]
  assert (small.data.train_split, small.data.eval_split) == ('train', 'val')   # synthetic splits
  assert small.train.init_learning_rate == 0.02      # 0.3 in the config; its decays scale alike
  assert list(small.train.learning_rate_levels) == pytest.approx([0.002, 0.0002])
  # Per-replica clipping with whole groups on every device of this machine (8 simulated CPUs).
  assert small.train.gradient_clip_mode == 'per_replica'
  assert small.train.global_batch_size % (8 * small.loss.normalizer_group_size) == 0
  assert config.train.total_steps == 185200          # the original is untouched
