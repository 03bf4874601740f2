"""SpineNet structure: exact parameter counts, shapes, resampling choices and spec validation."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA, random_variables
from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.analysis.summary import count_leaves as count_params
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig, endpoint_shapes

# Trainable parameters of the official TF graphs (levels 3-7, default settings).
OFFICIAL_BACKBONE_PARAMS = {'49S': 9_089_215, '49': 21_831_488, '96': 36_262_976,
                            '143': 60_247_616, '190': 126_587_664}


def abstract_variables(config, size=(256, 256)):
  model = SpineNet(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3))))


@pytest.mark.parametrize('model_id', sorted(OFFICIAL_BACKBONE_PARAMS))
def test_parameter_count_equals_official_graph(model_id):
  variables = abstract_variables(SpineNetConfig.from_model_id(model_id))
  assert count_params(variables['params']) == OFFICIAL_BACKBONE_PARAMS[model_id]


def test_49s_with_256_endpoints_matches_released_checkpoint_arithmetic():
  # The released 49S checkpoints have 256-channel endpoints: +(332 + 4*664)*128 conv, +2*640 BN.
  base = count_params(abstract_variables(SpineNetConfig.from_model_id('49S'))['params'])
  wide = count_params(abstract_variables(
      SpineNetConfig.from_model_id('49S', endpoints_num_filters=256))['params'])
  assert wide - base == 382_464 + 1_280


@pytest.mark.parametrize('size', [(640, 640), (384, 640), (640, 384), (512, 896), (320, 320)])
def test_endpoint_shapes(size):
  config = SpineNetConfig.from_model_id('49S')
  model = SpineNet(config)
  variables = abstract_variables(config)
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  h, w = size
  assert sorted(out) == [3, 4, 5, 6, 7]
  for level, x in out.items():
    assert x.shape == (2, -(-h // 2**level), -(-w // 2**level), 128), (level, x.shape)
  assert {k: v[:2] for k, v in endpoint_shapes(config, size).items()} == {
      k: v.shape[1:3] for k, v in out.items()}


def _official_resampling_table():
  kinds = {'same': 'same', 'conv3x3s2': 'conv3x3s2', 'conv3x3s2+maxpool3s2': 'conv3x3s2+maxpool3s2',
           'conv3x3s2+maxpool5s4': 'conv3x3s2+maxpool5s4', 'nearest_up_x2': 'up2',
           'nearest_up_x4': 'up4'}
  table = {}
  with open(os.path.join(DATA, 'official', 'spinenet_block_resampling_640.txt')) as f:
    for line in f:
      m = re.match(r'block(\d+) .*?: (.*)$', line.strip())
      if not m:
        continue
      parents = re.findall(r'in(\d+)\([^)]*\):([\w+]+)', m.group(2))
      merged = re.search(r'identity-add feats \[([\d, ]+)\]', m.group(2))
      table[int(m.group(1))] = ([(int(p), kinds[k]) for p, k in parents],
                                [int(x) for x in merged.group(1).split(',')] if merged else [])
  return table


@pytest.mark.parametrize('size', [(640, 640), (384, 640), (1024, 1024)])
def test_resampling_choices_match_official_table(size):
  # The official table is for 640x640; it holds for every size divisible by 128 (width-driven).
  table = _official_resampling_table()
  plan = SpineNetConfig.from_model_id('49').plan(size)
  assert len(table) == 15
  for block in plan.blocks:
    parents, merged = table[block.index]
    assert [(p.parent, p.kind) for p in block.parents] == parents, block.index
    assert list(block.merged_features) == merged, block.index
  assert plan.unused_features == (13, 15, 16)


def test_resample_channel_reduction_truncates_like_official():
  # 49S: a bottleneck parent with 664 channels -> 664/4*0.5 = 83; 166/4*0.5 = 20.75 -> 20.
  plan = SpineNetConfig.from_model_id('49S').plan((640, 640))
  reduced = {p.in_shape[2]: p.reduced_filters for b in plan.blocks for p in b.parents}
  assert reduced[664] == 83 and reduced[164] == 20 and reduced[166] == 83


def test_non_divisible_width_uses_legacy_resize():
  # 320 wide: level 7 is 3 wide, level 5 is 10 wide -> 10 % 3 != 0 needs the native resize.
  plan = SpineNetConfig.from_model_id('49').plan((320, 320))
  kinds = {(b.index, p.parent): p for b in plan.blocks for p in b.parents}
  up = kinds[(8, 9)]                      # block 8 (L5) from feature 9 (L7)
  assert up.upsample_scale is None and up.resize_to == (10, 10)
  down = kinds[(13, 5)]                   # block 13 (L7, 3 wide) from feature 5 (L4, 20 wide)
  assert down.downsample_conv and down.max_pools == ((5, 2),) and down.resize_to == (3, 3)


def test_model_garden_pooling_differs_only_at_ratio_8():
  official = SpineNetConfig.from_model_id('49').plan((640, 640))
  garden = SpineNetConfig.from_model_id('49', resample_pooling='model_garden').plan((640, 640))
  diffs = [(b.index, p.parent, p.kind, q.kind) for b, c in zip(official.blocks, garden.blocks)
           for p, q in zip(b.parents, c.parents) if p.kind != q.kind]
  assert diffs == [(13, 5, 'conv3x3s2+maxpool5s4', 'conv3x3s2+maxpool3s2+maxpool3s2')]
  assert [b.out_shape for b in official.blocks] == [b.out_shape for b in garden.blocks]


def test_native_resize_option_replaces_integer_upsampling():
  plan = SpineNetConfig.from_model_id('49', use_native_resize_op=True).plan((640, 640))
  ups = [p for b in plan.blocks for p in b.parents if p.in_shape[1] < b.target_width]
  assert ups and all(p.upsample_scale is None and p.resize_to for p in ups)


def test_drop_connect_rates_are_official():
  plan = SpineNetConfig.from_model_id('49', init_drop_connect_rate=0.2).plan((256, 256))
  np.testing.assert_allclose([b.drop_connect_rate for b in plan.blocks],
                             [0.2 * (i + 1) / 15 for i in range(15)])
  assert all(b.drop_connect_rate is None for b in SpineNetConfig().plan((256, 256)).blocks)


def test_custom_permutation_is_accepted():
  specs = list(bs.OFFICIAL_BLOCK_SPECS)
  specs[0], specs[1] = (specs[1].level, specs[1].block_fn, (0, 1), False), specs[0]
  config = SpineNetConfig(block_specs=specs, filter_size_scale=0.25)
  out = jax.eval_shape(SpineNet(config).apply, abstract_variables(config, (128, 128)),
                       jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))
  assert sorted(out) == [3, 4, 5, 6, 7]


def _with(index, **changes):
  specs = [list(s.__dict__.values()) for s in bs.OFFICIAL_BLOCK_SPECS]
  entry = dict(zip(('level', 'block_fn', 'input_offsets', 'is_output'), specs[index]))
  entry.update(changes)
  specs[index] = (entry['level'], entry['block_fn'], entry['input_offsets'], entry['is_output'])
  return specs


@pytest.mark.parametrize('specs, message', [
    (_with(3, level=9), r'block 3 .*level must be an int in \[1, 2, 3, 4, 5, 6, 7\]'),
    (_with(3, block_fn='mbconv'), r'block 3 .*block_fn must be one of'),
    (_with(3, input_offsets=(2, 5)), r'block 3 .*input offset 5 is out of range.*0\.\.4'),
    (_with(0, input_offsets=(-1, 1)), r'block 0 .*input offset -1 is out of range'),
    (_with(3, input_offsets=(2,)), r'block 3 .*exactly two input offsets'),
    (_with(13, level=6), r'block 14 .*duplicate output level 6 \(block 13'),
    (_with(13, is_output=False), r'no output block for level\(s\) \[7\]'),
    (_with(13, is_output='yes'), r'block 13 .*is_output must be a bool'),
    ([], r'block_specs is empty'),
    ([(2, 'bottleneck', 0, False)], r'block 0: expected \(level, block_fn'),
])
def test_invalid_block_specs_raise_clear_errors(specs, message):
  with pytest.raises(bs.BlockSpecError, match=message):
    SpineNetConfig(block_specs=specs)


def test_output_level_outside_range_is_built_but_not_an_endpoint(caplog):
  config = SpineNetConfig(min_level=4, max_level=7, filter_size_scale=0.25)
  out = jax.eval_shape(SpineNet(config).apply, abstract_variables(config, (128, 128)),
                       jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))
  assert sorted(out) == [4, 5, 6, 7]
  assert 'output level outside [4, 7]' in caplog.text


def test_unbuildable_input_size_names_the_block():
  # 100 high, 640 wide: heights follow the width, parents of block 2 disagree in height.
  with pytest.raises(bs.BlockSpecError, match=r'block \d+ .*resample to different shapes'):
    SpineNetConfig().plan((100, 640))


@pytest.mark.parametrize('bad, message', [
    (dict(activation='gelu'), 'activation must be one of'),
    (dict(conv_padding='valid'), 'conv_padding must be one of'),
    (dict(resample_pooling='avg'), 'resample_pooling must be one of'),
    (dict(block_repeats=0), 'block_repeats must be >= 1'),
    (dict(dropblock_keep_prob=0.9), 'must be set together'),
    (dict(init_drop_connect_rate=1.5), 'init_drop_connect_rate must be in'),
])
def test_invalid_settings_raise(bad, message):
  with pytest.raises(ValueError, match=message):
    SpineNetConfig(**bad)


def test_unknown_model_id():
  with pytest.raises(ValueError, match=r"Unknown SpineNet model_id '50'"):
    SpineNetConfig.from_model_id('50')
  assert SpineNetConfig.from_model_id('49s').filter_size_scale == 0.65
  assert SpineNetConfig.from_model_id('143l').filter_size_scale == 1.3


def test_config_round_trips_through_dict():
  config = SpineNetConfig.from_model_id('49S', endpoints_num_filters=256, activation='relu',
                                        conv_padding='same', resample_pooling='model_garden',
                                        init_drop_connect_rate=0.2)
  assert SpineNetConfig.from_dict(config.to_dict()) == config


def test_bfloat16_compute_keeps_float32_parameters():
  config = SpineNetConfig(filter_size_scale=0.25, endpoints_num_filters=32)
  model = SpineNet(config, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  out = model.apply(variables, x)
  assert all(v.dtype == jnp.bfloat16 for v in out.values())
  ref = SpineNet(config).apply(variables, x)
  for level in out:
    err = np.linalg.norm(np.asarray(out[level], np.float32) - ref[level]) / np.linalg.norm(ref[level])
    assert err < 0.05, (level, err)


def test_bad_input_shape():
  model = SpineNet(SpineNetConfig(filter_size_scale=0.25))
  with pytest.raises(ValueError, match=r'NHWC images with 3 channels, got shape \(1, 64, 64\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 64, 64)))


def _train_loss(model, variables, x):
  def loss(params, rng):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                         mutable=['batch_stats'], rngs={'dropout': rng})
    return sum(jnp.mean(v**2) for v in out.values())
  return jax.jit(loss)


def test_every_parameter_gets_a_gradient_with_stochastic_depth():
  model = SpineNet(SpineNetConfig(filter_size_scale=0.25, endpoints_num_filters=16,
                                  init_drop_connect_rate=0.2))
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = random_variables(model, x.shape)
  loss = _train_loss(model, variables, x)
  grads = jax.jit(jax.grad(loss))(variables['params'], jax.random.key(2))
  norms = {'/'.join(str(k.key) for k in path): float(jnp.abs(g).max())
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.isfinite(v) for v in norms.values())
  dead = [k for k, v in norms.items() if v == 0]
  assert not dead, dead[:5]
  # Stochastic depth is random in training.
  assert loss(variables['params'], jax.random.key(3)) != loss(variables['params'], jax.random.key(4))


def test_dropblock_is_random_in_training_and_off_in_inference():
  model = SpineNet(SpineNetConfig(filter_size_scale=0.25, endpoints_num_filters=16,
                                  dropblock_keep_prob=0.9, dropblock_size=3))
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = random_variables(model, x.shape)
  loss = _train_loss(model, variables, x)
  a, b = loss(variables['params'], jax.random.key(3)), loss(variables['params'], jax.random.key(4))
  assert np.isfinite(a) and a != b
  infer = [jax.jit(model.apply)(variables, x) for _ in range(2)]
  np.testing.assert_array_equal(infer[0][3], infer[1][3])
