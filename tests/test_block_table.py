"""Per-block tables and model comparisons: totals equal the summary tool, rows equal the plan."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT
from spinenet_jax.analysis import block_table as bt
from spinenet_jax.analysis import summary
from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig


@pytest.fixture(scope='module')
def table49():
  return bt.block_table(SpineNetConfig.from_model_id('49'), (640, 640))


def test_totals_equal_summary_tool(table49):
  config = SpineNetConfig.from_model_id('49')
  result = summary.summarize(SpineNet(config), (640, 640))
  assert table49.total_params == result['backbone_params'] == 21_831_488
  assert table49.total_macs == round(result['gmacs'] * 1e9)
  assert table49.gmacs == pytest.approx(28.26, abs=0.005)
  # Every row kind contributes; subtotals add up to the totals.
  kinds = [table49.subtotal(k) for k in ('stem', 'block', 'endpoint')]
  assert sum(p for p, _ in kinds) == table49.total_params
  assert sum(m for _, m in kinds) == table49.total_macs


@pytest.mark.parametrize('model_id, size', [('49S', (384, 640)), ('49', (320, 320)),
                                            ('96', (256, 256))])
def test_per_layer_macs_equal_count_macs(model_id, size):
  # Non-square and non-divisible sizes (legacy resize), and block repeats: still exact.
  model = SpineNet(SpineNetConfig.from_model_id(model_id))
  variables, images = bt.abstract_variables(model, size)
  by_path = bt.layer_macs_by_path(model, variables, images)
  assert sum(by_path.values()) == summary.count_macs(lambda v, x: model.apply(v, x), variables,
                                                     images)
  assert all(path[-1] == 'conv' for path in by_path)


def test_rows_follow_official_specs_and_plan(table49):
  plan = SpineNetConfig.from_model_id('49').plan((640, 640))
  assert [r.name for r in table49.rows] == (
      ['stem', 'stem_group_0', 'stem_group_1'] + [f'block_{i}' for i in range(15)]
      + [f'endpoint_{lvl}' for lvl in range(3, 8)])
  blocks = table49.blocks
  assert len(blocks) == 15
  for row, spec, block in zip(blocks, bs.OFFICIAL_BLOCK_SPECS, plan.blocks):
    assert (row.level, row.block_fn, row.parents, row.is_output) == (
        spec.level, spec.block_fn, spec.input_offsets, spec.is_output)
    assert row.resample == tuple(p.kind for p in block.parents)
    assert (row.merged, row.out_shape, row.feature) == (
        block.merged_features, block.out_shape, block.index + 2)
  # Official resampling table (tests/data/official/spinenet_block_resampling_640.txt), block 13.
  assert blocks[13].resample == ('conv3x3s2+maxpool5s4', 'conv3x3s2+maxpool3s2')
  assert blocks[12].merged == (11,)


def test_block_costs_by_hand(table49):
  # Block 0: L2 bottleneck (64 filters) on two 160x160x256 stem features, both 'same'.
  # Each resampling: 1x1 256->32 and 1x1 32->256, each with BN (scale + bias).
  hw = 160 * 160
  resample_params = 2 * (256 * 32 + 2 * 32 + 32 * 256 + 2 * 256)
  resample_macs = 2 * (hw * 256 * 32 + hw * 32 * 256)
  group_params = 256 * 64 + 128 + 9 * 64 * 64 + 128 + 64 * 256 + 512   # no projection
  group_macs = hw * (256 * 64 + 9 * 64 * 64 + 64 * 256)
  row = table49.blocks[0]
  assert (row.resample_params, row.resample_macs) == (resample_params, resample_macs)
  assert (row.params, row.macs) == (resample_params + group_params, resample_macs + group_macs)
  end3 = table49.rows[-5]
  assert end3.name == 'endpoint_3' and end3.parents == (13,) and end3.out_shape == (80, 80, 256)
  assert (end3.params, end3.macs) == (512 * 256 + 512, 80 * 80 * 512 * 256)
  stem = table49.rows[0]
  assert (stem.params, stem.macs) == (7 * 7 * 3 * 64 + 128, 320 * 320 * 7 * 7 * 3 * 64)


def test_format_table(table49):
  text = bt.format_table(table49)
  assert text.startswith('SpineNet-49 at 640x640: 21,831,488 parameters, 28.26 GMACs')
  total = [line for line in text.splitlines() if line.startswith('TOTAL')]
  assert total and total[0].split()[-2:] == ['21,831,488', '28,262.0']
  assert 'f5:conv3x3s2+maxpool5s4' in text
  markdown = bt.format_table(table49, markdown=True).splitlines()
  assert markdown[2].startswith('| row | feat |') and markdown[3].startswith('| --- | ---: |')
  assert len(markdown) == 4 + len(table49.rows) + 4


def test_swap_that_breaks_the_order_names_the_block():
  specs = bt.swap_blocks(bs.OFFICIAL_BLOCK_SPECS, 3, 4)
  assert specs[3] == bs.OFFICIAL_BLOCK_SPECS[4] and specs[4] == bs.OFFICIAL_BLOCK_SPECS[3]
  with pytest.raises(bs.BlockSpecError, match=r'^block 3 .*input offset 5 is out of range'):
    SpineNetConfig.from_model_id('49', block_specs=specs)


def test_parent_edit_gives_a_new_table():
  specs = bt.edit_block(bs.OFFICIAL_BLOCK_SPECS, 14, input_offsets=[12, 13])
  assert bs.OFFICIAL_BLOCK_SPECS[14].input_offsets == (12, 14)   # the original is untouched
  config = SpineNetConfig.from_model_id('49', block_specs=specs)
  table = bt.block_table(config, (640, 640))
  row = table.blocks[14]
  assert row.parents == (12, 13)
  assert row.resample == ('conv3x3s2+maxpool3s2', 'conv3x3s2+maxpool5s4')
  assert table.label == 'SpineNet (custom)'
  model = SpineNet(config)
  variables, images = bt.abstract_variables(model, (640, 640))
  assert table.total_params == summary.count_leaves(variables['params']) == 21_556_800
  assert table.total_macs == summary.count_macs(lambda v, x: model.apply(v, x), variables, images)


def test_bad_edit_level_names_the_block():
  with pytest.raises(bs.BlockSpecError, match=r'^block 14 .*duplicate output level 7 \(block 13'):
    SpineNetConfig(block_specs=bt.edit_block(bs.OFFICIAL_BLOCK_SPECS, 14, level=7))


def test_compare_models():
  rows = bt.compare_models(['49s', '49'])
  assert [r['model'] for r in rows] == ['SpineNet-49S', 'SpineNet-49']
  small, base = rows
  assert (small['params'], base['params']) == (9_089_215, 21_831_488)
  assert small['gmacs'] == pytest.approx(12.33, abs=0.005)
  assert base['gmacs'] == pytest.approx(28.26, abs=0.005)
  assert small['filters_per_level'] == {2: 41, 3: 83, 4: 166, 5: 166, 6: 166, 7: 166}
  assert base['block_channels_per_level'] == {2: (256,), 3: (512,), 4: (256, 1024),
                                              5: (256, 1024), 6: (256, 1024), 7: (256, 1024)}
  assert base['stem_params'] + base['block_params'] + base['endpoint_params'] == base['params']
  text = bt.format_comparison(rows)
  assert 'SpineNet-49S' in text and '9,089,215' in text and 'L4:256/1024' in text


def test_compare_needs_a_size_for_143l():
  with pytest.raises(ValueError, match=r"No image size for SpineNet-143L; pass image_sizes="):
    bt.compare_models(['143l'])


def test_config_image_sizes_match_config_files():
  for model_id, size in bt.CONFIG_IMAGE_SIZES.items():
    path = os.path.join(ROOT, 'configs', f'spinenet{model_id.lower()}.py')
    spec = importlib.util.spec_from_file_location(f'config_{model_id}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.backbone.model_id == model_id
    assert tuple(config.input.image_size) == (size, size)


def test_unbuildable_size_raises_before_tracing():
  with pytest.raises(bs.BlockSpecError, match=r'block \d+ .*resample to different shapes'):
    bt.block_table(SpineNetConfig(), (100, 640))


def test_abstract_variables_are_shapes_only():
  variables, images = bt.abstract_variables(SpineNet(SpineNetConfig()), (128, 256))
  assert images == jax.ShapeDtypeStruct((1, 128, 256, 3), jnp.float32)
  leaves = jax.tree_util.tree_leaves(variables)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
