"""The scale-permuted network drawing: one node per feature, one arrow per resampling, a PNG."""

import matplotlib.colors as mcolors
import pytest
from matplotlib.figure import Figure

from spinenet_jax.analysis import block_table as bt
from spinenet_jax.analysis import drawing
from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.modeling.spinenet import SpineNetConfig


@pytest.fixture(scope='module')
def fig49():
  return drawing.draw_network(SpineNetConfig.from_model_id('49'), (640, 640))


def _rgb(color):
  return mcolors.to_hex(color, keep_alpha=False)


def _patches(fig, prefix):
  return {p.get_gid(): p for p in fig.axes[0].patches if (p.get_gid() or '').startswith(prefix)}


def test_nodes_and_edges_follow_the_plan(fig49):
  plan = SpineNetConfig.from_model_id('49').plan((640, 640))
  assert isinstance(fig49, Figure)
  assert drawing.graph_counts(fig49) == {'node': 17, 'edge': 30, 'merge': 1}
  assert set(_patches(fig49, 'edge:')) == {
      f'edge:{p.parent}->{b.feature_index}' for b in plan.blocks for p in b.parents}
  assert set(_patches(fig49, 'merge:')) == {'merge:11->14'}
  assert fig49.axes[0].get_title() == 'SpineNet-49 at 640x640'


def test_edge_styles_follow_resampling_kinds(fig49):
  edges = _patches(fig49, 'edge:')
  expected = {'edge:5->15': 'down_pool', 'edge:9->10': 'up', 'edge:0->2': 'same',
              'edge:2->4': 'down_conv', 'edge:3->4': 'up'}
  for gid, kind in expected.items():
    assert _rgb(edges[gid].get_edgecolor()) == _rgb(drawing.EDGE_STYLES[kind]['color']), gid
  plan = SpineNetConfig.from_model_id('49').plan((640, 640))
  by_edge = {(p.parent, b.index): p for b in plan.blocks for p in b.parents}
  assert drawing.edge_kind(by_edge[(5, 13)]) == 'down_pool'
  assert drawing.edge_label(by_edge[(5, 13)]) == '/8 pool5s4'
  assert drawing.edge_label(by_edge[(9, 8)]) == 'x4'
  assert drawing.edge_label(by_edge[(2, 2)]) == '/2'
  assert drawing.edge_label(by_edge[(0, 0)]) == ''


def test_output_blocks_are_highlighted(fig49):
  nodes = _patches(fig49, 'node:')
  outputs = {f'node:f{i + 2}' for i, s in enumerate(bs.OFFICIAL_BLOCK_SPECS) if s.is_output}
  highlighted = {gid for gid, p in nodes.items()
                 if _rgb(p.get_edgecolor()) == _rgb(drawing.OUTPUT_EDGE_COLOR)}
  assert highlighted == outputs == {f'node:f{f}' for f in range(12, 17)}
  texts = {t.get_text() for t in fig49.axes[0].texts}
  assert {'P3', 'P4', 'P5', 'P6', 'P7', 'b0', 'b14', 'stem0', '+ merge'} <= texts
  # Residual and bottleneck blocks are told apart by colour.
  assert _rgb(nodes['node:f3'].get_facecolor()) == _rgb(drawing.NODE_COLORS['residual'])
  assert _rgb(nodes['node:f4'].get_facecolor()) == _rgb(drawing.NODE_COLORS['bottleneck'])


def test_save_png(fig49, tmp_path):
  path = drawing.save_png(fig49, tmp_path / 'sub' / 'spinenet49.png', dpi=60)
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  width = int.from_bytes(data[16:20], 'big')
  height = int.from_bytes(data[20:24], 'big')
  assert width > 600 and height > 250 and width > height


def test_edited_spec_and_legacy_resize():
  specs = bt.edit_block(bs.OFFICIAL_BLOCK_SPECS, 14, input_offsets=(12, 13))
  fig = drawing.draw_network(SpineNetConfig(block_specs=specs), (320, 320), title='edited')
  edges = _patches(fig, 'edge:')
  assert 'edge:13->16' in edges and 'edge:14->16' not in edges
  assert fig.axes[0].get_title() == 'edited'
  # At 320 wide, level 7 is 3 wide: block 8 (L5, 10 wide) reads it with the legacy resize.
  texts = {t.get_text() for t in fig.axes[0].texts}
  assert 'resize x3.3' in texts
