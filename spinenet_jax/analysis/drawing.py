"""A picture of a scale-permuted network: blocks in order (x) at their feature level (y).

Every node is a feature (the two stem features, then one per block), coloured by block type. Every
arrow is one parent resampling, styled by what it does (same level, down by a strided conv, down by
a conv plus max pool, up by nearest repetition or resize), with the resolution ratio written on it.
Dotted green arrows are the output-merge rule's identity additions; output blocks have a gold
border and their endpoint level. The drawing reads the static `topology` plan that the Flax module
builds from, so it shows exactly the network that runs.

Only the object-oriented matplotlib API is used (a `Figure` on an Agg canvas), never pyplot, so
drawing needs no display and changes no global backend.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path

from spinenet_jax.analysis.block_table import describe_config
from spinenet_jax.modeling import topology
from spinenet_jax.modeling.spinenet import SpineNetConfig

NODE_COLORS = {'stem': '#d9d9d9', 'bottleneck': '#9ecae1', 'residual': '#fdae6b'}
OUTPUT_EDGE_COLOR = '#d4a000'
EDGE_STYLES = {
    'same': dict(color='#8c8c8c', linestyle='-', label='same level (1x1 convs)'),
    'down_conv': dict(color='#2166ac', linestyle='-', label='down: 3x3/s2 conv'),
    'down_pool': dict(color='#7b3294', linestyle='-', label='down: 3x3/s2 conv + max pool'),
    'up': dict(color='#d6604d', linestyle='--', label='up: nearest'),
    'merge': dict(color='#1a9850', linestyle=':', label='output merge (identity add)'),
}
NODE_W, NODE_H = 0.72, 0.5   # node box in data units (x: one feature, y: one level)


def edge_kind(resample: topology.ResamplePlan) -> str:
  """The EDGE_STYLES key of a resampling: 'same', 'down_conv', 'down_pool' or 'up'."""
  if resample.downsample_conv:
    return 'down_pool' if resample.max_pools else 'down_conv'
  if resample.upsample_scale or resample.resize_to:
    return 'up'
  return 'same'


def edge_label(resample: topology.ResamplePlan) -> str:
  """Short text for an arrow: the width ratio and, for pools, the pool ('/4 pool3s2', 'x2')."""
  width, target = resample.in_shape[1], resample.out_shape[1]
  if resample.downsample_conv:
    ratio = f'/{width // target}' if width % target == 0 else f'/{width / target:.1f}'
    pools = ' '.join(f'pool{size}s{stride}' for size, stride in resample.max_pools)
    resize = ' +resize' if resample.resize_to else ''
    return f'{ratio} {pools}{resize}'.replace('  ', ' ').strip()
  if resample.upsample_scale:
    return f'x{resample.upsample_scale}'
  if resample.resize_to:
    return f'resize x{target / width:.2g}'
  return ''


def _levels(plan: topology.NetworkPlan) -> list[int]:
  levels = [2] + [b.spec.level for b in plan.blocks]
  return list(range(min(levels), max(levels) + 1))


def _feature_levels(plan: topology.NetworkPlan) -> list[int]:
  return [2] * (len(plan.feature_shapes) - len(plan.blocks)) + [b.spec.level for b in plan.blocks]


def _curve(start: tuple[float, float], end: tuple[float, float], bend: float) -> np.ndarray:
  """Points of a quadratic Bezier from start to end; its control point lies `bend` data units off
  the chord's midpoint, to the left of the direction of travel (up for a left-to-right arrow)."""
  a, b = np.array(start), np.array(end)
  chord = b - a
  normal = np.array([-chord[1], chord[0]]) / max(np.hypot(*chord), 1e-9)
  control = (a + b) / 2 + bend * normal
  t = np.linspace(0, 1, 80)[:, None]
  return (1 - t)**2 * a + 2 * t * (1 - t) * control + t**2 * b


def _inside(points: np.ndarray, center: tuple[float, float], margin: float = 0.02) -> np.ndarray:
  return ((np.abs(points[:, 0] - center[0]) <= NODE_W / 2 + margin)
          & (np.abs(points[:, 1] - center[1]) <= NODE_H / 2 + margin))


def _route(start, end, which: int, nodes: Sequence[tuple[float, float]]) -> np.ndarray:
  """The least bent curve from start to end that crosses no other node (first parents bow up).

  Falls back to a moderate bow when every candidate crosses something.
  """
  others = [c for c in nodes if c != start and c != end]
  sign = 1.0 if which == 0 else -1.0
  for size in (0.0, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2):
    for bend in (sign * size, -sign * size):
      points = _curve(start, end, bend)
      if not any(_inside(points, c, 0.05).any() for c in others):
        return points
  return _curve(start, end, sign * 0.35)


def _trim(points: np.ndarray, start, end) -> np.ndarray:
  """Drops the part of a curve inside its two end nodes, so arrows meet the node borders."""
  keep = points[~(_inside(points, start) | _inside(points, end))]
  return keep if len(keep) >= 2 else points[[0, -1]]


def _draw_edge(ax, start, end, kind: str, which: int, gid: str, nodes, label: str = '') -> None:
  style = EDGE_STYLES[kind]
  points = _trim(_route(start, end, which, nodes), start, end)
  arrow = FancyArrowPatch(path=Path(points), arrowstyle='-|>', mutation_scale=11,
                          color=style['color'], linestyle=style['linestyle'],
                          linewidth=1.4 if kind != 'same' else 1.1, alpha=0.85, zorder=1)
  arrow.set_gid(gid)
  ax.add_patch(arrow)
  if label:
    # The label goes at the point nearest 40% (first parent) or 60% (second parent) of the way
    # that is clear of every node, so the labels of parallel arrows do not cover each other.
    target = len(points) * (0.4 if which == 0 else 0.6)
    free = [i for i in np.argsort(np.abs(np.arange(len(points)) - target))
            if not any(abs(points[i, 0] - x) < NODE_W / 2 + 0.3 and abs(points[i, 1] - y) < NODE_H
                       for x, y in nodes)]
    x, y = points[free[0] if free else len(points) // 2]
    ax.text(x, y, label, fontsize=6.5, color=style['color'], ha='center', va='center',
            zorder=3, bbox=dict(boxstyle='round,pad=0.1', fc='white', ec='none', alpha=0.8))


def _draw_node(ax, x: float, y: float, fn: str, text: str, sub: str, output_level: int | None,
               gid: str) -> None:
  box = FancyBboxPatch((x - NODE_W / 2, y - NODE_H / 2), NODE_W, NODE_H,
                       boxstyle='round,pad=0,rounding_size=0.1', fc=NODE_COLORS[fn],
                       ec=OUTPUT_EDGE_COLOR if output_level else '#404040',
                       lw=3.0 if output_level else 1.0, zorder=2)
  box.set_gid(gid)
  ax.add_patch(box)
  ax.text(x, y + 0.07, text, ha='center', va='center', fontsize=8.5, fontweight='bold', zorder=4)
  ax.text(x, y - 0.14, sub, ha='center', va='center', fontsize=6.5, color='#303030', zorder=4)
  if output_level:
    ax.text(x, y + NODE_H / 2 + 0.1, f'P{output_level}', ha='center', va='bottom', fontsize=8,
            fontweight='bold', color='#8a6800', zorder=4)


def _legend(ax) -> None:
  handles = [Patch(fc=NODE_COLORS[k], ec='#404040', label=k) for k in ('stem', 'bottleneck',
                                                                         'residual')]
  handles.append(Patch(fc='white', ec=OUTPUT_EDGE_COLOR, lw=3, label='output block (P level)'))
  handles += [Line2D([], [], color=s['color'], linestyle=s['linestyle'], lw=1.5, label=s['label'])
              for s in EDGE_STYLES.values()]
  ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=5, fontsize=8,
            frameon=False)


def draw_plan(plan: topology.NetworkPlan, title: str | None = None,
              figsize: Sequence[float] | None = None) -> Figure:
  """Draws a planned network; returns a matplotlib Figure (an Agg canvas, no pyplot)."""
  levels = _levels(plan)
  feature_levels = _feature_levels(plan)
  num_stem = len(feature_levels) - len(plan.blocks)
  n = len(feature_levels)
  fig = Figure(figsize=figsize or (max(8.0, 0.8 * n + 3.2), 1.0 * len(levels) + 1.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  pos = [(float(x), float(lvl)) for x, lvl in enumerate(feature_levels)]

  for f in range(num_stem):
    _draw_node(ax, *pos[f], 'stem', f'stem{f}', f'{plan.feature_shapes[f][2]} ch', None,
               f'node:f{f}')
  for b in plan.blocks:
    f = b.feature_index
    _draw_node(ax, *pos[f], b.spec.block_fn, f'b{b.index}', f'{b.out_shape[2]} ch',
               b.spec.level if b.spec.is_output else None, f'node:f{f}')
    for which, r in enumerate(b.parents):
      _draw_edge(ax, pos[r.parent], pos[f], edge_kind(r), which, f'edge:{r.parent}->{f}', pos,
                 edge_label(r))
    for j in b.merged_features:
      _draw_edge(ax, pos[j], pos[f], 'merge', 1, f'merge:{j}->{f}', pos, '+ merge')

  widths = {lvl: plan.feature_shapes[f][:2] for f, lvl in enumerate(feature_levels)}
  ax.set_yticks(levels)
  ax.set_yticklabels([f'L{lvl}\n' + ('{}x{}'.format(*widths[lvl]) if lvl in widths else '')
                      for lvl in levels], fontsize=8)
  ax.set_xticks(range(n))
  ax.set_xticklabels([f'f{f}' for f in range(n)], fontsize=8)
  ax.set_xlabel('block order (feature index: f0, f1 are the stem, block i is feature i + 2)')
  ax.set_ylabel('feature level (resolution 1/2^level)')
  ax.set_xlim(-0.6, n - 0.4)
  ax.set_ylim(levels[0] - 0.6, levels[-1] + 0.7)
  ax.grid(axis='y', color='#eeeeee', zorder=0)
  ax.set_axisbelow(True)
  for side in ('top', 'right'):
    ax.spines[side].set_visible(False)
  h, w = plan.input_shape
  ax.set_title(title or f'Scale-permuted network at {h}x{w}', fontsize=11)
  _legend(ax)
  fig.tight_layout()
  return fig


def draw_network(config: SpineNetConfig, input_size: Sequence[int] = (640, 640),
                 title: str | None = None) -> Figure:
  """Draws `SpineNet(config)` at an (H, W) input (resampling depends on the size)."""
  h, w = (int(s) for s in input_size)
  plan = config.plan((h, w))
  return draw_plan(plan, title or f'{describe_config(config)} at {h}x{w}')


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> str:
  """Writes `fig` as a PNG (creating the folder) and returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=dpi, format='png', bbox_inches='tight', facecolor='white')
  return path


def graph_counts(fig: Figure) -> dict[str, int]:
  """Nodes, parent edges and merge edges of a figure from `draw_plan`, counted by artist gid."""
  gids = [p.get_gid() or '' for ax in fig.axes for p in ax.patches]
  return {kind: sum(g.startswith(kind + ':') for g in gids) for kind in ('node', 'edge', 'merge')}
