"""Per-block tables of a SpineNet: what each block is, what it costs, and model comparisons.

Structure (levels, parents, resampling, shapes) comes from the static `topology` plan, the same one
the Flax module builds. Costs come from the model itself, traced abstractly (`jax.eval_shape`,
nothing is allocated): parameters are read from the params tree by top-level module (`stem`,
`stem_group_g`, `block_i`, `endpoint_l`), multiply-adds are recorded at every `nn.Conv` / `nn.Dense`
call and attributed by module path. So the rows add up exactly to `analysis.summary.summarize`
(tests check this), and a table can never disagree with the network it describes.

    table = block_table(SpineNetConfig.from_model_id('49'), (640, 640))
    print(format_table(table))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.modeling import topology
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig

# Input size of each model's config file (configs/spinenet*.py), as in the paper's table.
CONFIG_IMAGE_SIZES = {'49S': 640, '49': 640, '96': 1024, '143': 1280, '190': 1280}
MODEL_IDS = tuple(CONFIG_IMAGE_SIZES)


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of a block table: a stem part, a scale-permuted block or an endpoint conv."""
  name: str                       # top-level module: stem, stem_group_0, block_3, endpoint_5
  kind: str                       # 'stem', 'block' or 'endpoint'
  feature: int | None             # feature index it produces (stem groups 0, 1; block i -> i + 2)
  level: int
  block_fn: str | None
  parents: tuple[int, ...]        # feature indices it reads
  resample: tuple[str, ...]       # `ResamplePlan.kind` per parent (stem/endpoints: their op)
  merged: tuple[int, ...]         # raw features added by the output-merge rule
  is_output: bool
  filters: int                    # conv / block-group filters (a bottleneck outputs 4x)
  out_shape: tuple[int, int, int]
  params: int
  macs: int
  resample_params: int = 0        # the part of `params` in the two resamplings (blocks only)
  resample_macs: int = 0

  @property
  def channels(self) -> int:
    return self.out_shape[2]


@dataclasses.dataclass(frozen=True)
class BlockTable:
  """The rows of one model at one input size; totals equal the summary tool's numbers."""
  label: str
  input_size: tuple[int, int]
  rows: tuple[TableRow, ...]

  @property
  def blocks(self) -> tuple[TableRow, ...]:
    return tuple(r for r in self.rows if r.kind == 'block')

  @property
  def total_params(self) -> int:
    return sum(r.params for r in self.rows)

  @property
  def total_macs(self) -> int:
    return sum(r.macs for r in self.rows)

  @property
  def gmacs(self) -> float:
    return self.total_macs / 1e9

  def subtotal(self, kind: str) -> tuple[int, int]:
    """(params, multiply-adds) of all rows of one kind."""
    rows = [r for r in self.rows if r.kind == kind]
    return sum(r.params for r in rows), sum(r.macs for r in rows)

  def as_dicts(self) -> list[dict]:
    return [dataclasses.asdict(r) for r in self.rows]


def _size(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _layer_macs(module: nn.Module, out: Any) -> int | None:
  """Multiply-adds of one Conv / Dense call: output elements x (kernel taps x input channels)."""
  if not isinstance(module, (nn.Conv, nn.Dense)):
    return None
  kernel = module.variables['params']['kernel']
  # A conv kernel is (*window, in / groups, out); a dense one (in, out): both contract all but last.
  return math.prod(out.shape) * math.prod(kernel.shape[:-1])


def layer_macs_by_path(model: nn.Module, variables: Any, images: Any) -> dict[tuple[str, ...], int]:
  """Multiply-adds of every Conv / Dense call of `model.apply(variables, images)`, by module path.

  Traced abstractly: `images` and `variables` may be jax.ShapeDtypeStruct trees.
  """
  macs: dict[tuple[str, ...], int] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      n = _layer_macs(context.module, out)
      if n is not None:
        path = context.module.path
        macs[path] = macs.get(path, 0) + n
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
  return macs


def abstract_variables(model: nn.Module, input_size: Sequence[int]) -> tuple[Any, Any]:
  """(variables, images) of a batch-1 `model` at an (H, W) input, as shapes only."""
  images = jax.ShapeDtypeStruct((1, *input_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  return variables, images


def _costs(params: Any, macs_by_path: dict, name: str) -> tuple[int, int]:
  return _size(params[name]), sum(n for p, n in macs_by_path.items() if p[0] == name)


def _block_row(block: topology.BlockPlan, params: Any, macs_by_path: dict) -> TableRow:
  name = f'block_{block.index}'
  n_params, n_macs = _costs(params, macs_by_path, name)
  resamples = [f'resample_{p}' for p in range(len(block.parents))]
  return TableRow(
      name, 'block', block.feature_index, block.spec.level, block.spec.block_fn,
      tuple(p.parent for p in block.parents), tuple(p.kind for p in block.parents),
      block.merged_features, block.spec.is_output, block.filters, block.out_shape, n_params, n_macs,
      resample_params=sum(_size(params[name][r]) for r in resamples),
      resample_macs=sum(n for p, n in macs_by_path.items() if p[0] == name and p[1] in resamples))


def _stem_rows(config: SpineNetConfig, plan: topology.NetworkPlan, params: Any,
               macs_by_path: dict) -> list[TableRow]:
  h, w = plan.input_shape
  conv_shape = (topology.stride2_size(h), topology.stride2_size(w), bs.STEM_CONV_FILTERS)
  rows = [TableRow('stem', 'stem', None, 1, None, (), ('conv7x7s2',), (), False,
                   bs.STEM_CONV_FILTERS, conv_shape, *_costs(params, macs_by_path, 'stem'))]
  filters = bs.block_filters(2, config.filter_size_scale)
  for g in range(bs.NUM_STEM_FEATURES):
    # Group 0 reads the stem conv after its 3x3/s2 max pool; group 1 reads group 0.
    parents, resample = ((), ('maxpool3s2',)) if g == 0 else ((g - 1,), ('same',))
    name = f'stem_group_{g}'
    rows.append(TableRow(name, 'stem', g, 2, bs.STEM_BLOCK_FN, parents, resample, (), False,
                         filters, plan.stem_shape, *_costs(params, macs_by_path, name)))
  return rows


def _endpoint_rows(config: SpineNetConfig, plan: topology.NetworkPlan, params: Any,
                   macs_by_path: dict) -> list[TableRow]:
  shapes = topology.endpoint_shapes(plan, config.min_level, config.max_level,
                                    config.endpoints_num_filters)
  rows = []
  for level, shape in shapes.items():
    block = plan.blocks[plan.output_blocks[level]]
    name = f'endpoint_{level}'
    rows.append(TableRow(name, 'endpoint', None, level, None, (block.feature_index,), ('conv1x1',),
                         (), True, config.endpoints_num_filters, shape,
                         *_costs(params, macs_by_path, name)))
  return rows


def block_table(config: SpineNetConfig, input_size: Sequence[int] = (640, 640),
                label: str | None = None) -> BlockTable:
  """Rows for the stem, every scale-permuted block and every endpoint of `SpineNet(config)`.

  Raises BlockSpecError if the specs cannot build a network at this input size.
  """
  input_size = tuple(int(s) for s in input_size)
  plan = config.plan(input_size)
  model = SpineNet(config)
  variables, images = abstract_variables(model, input_size)
  params = variables['params']
  macs_by_path = layer_macs_by_path(model, variables, images)
  rows = (_stem_rows(config, plan, params, macs_by_path)
          + [_block_row(b, params, macs_by_path) for b in plan.blocks]
          + _endpoint_rows(config, plan, params, macs_by_path))
  # Every module must land in a row, or the totals would silently stop matching the model.
  names = {r.name for r in rows}
  missing = sorted(set(params) - names) + sorted({p[0] for p in macs_by_path} - names)
  if missing:
    raise ValueError(f'block_table: modules not attributed to any row: {missing}')
  return BlockTable(label or describe_config(config), input_size, tuple(rows))


def describe_config(config: SpineNetConfig) -> str:
  """'SpineNet-49' when the scaling and specs are a model id's, else 'SpineNet (custom)'."""
  for model_id, s in bs.SCALING_MAP.items():
    if (config.block_specs == bs.OFFICIAL_BLOCK_SPECS
        and (s.endpoints_num_filters, s.filter_size_scale, s.resample_alpha, s.block_repeats)
        == (config.endpoints_num_filters, config.filter_size_scale, config.resample_alpha,
            config.block_repeats)):
      return f'SpineNet-{model_id}'
  return 'SpineNet (custom)'


def compare_models(model_ids: Iterable[str] = MODEL_IDS,
                   image_sizes: dict[str, int] | None = None) -> list[dict]:
  """One dict per model id: scaling, filters and channels per level, params and GMACs at its size.

  `image_sizes` maps a model id to a square input size (default: each config's, CONFIG_IMAGE_SIZES).
  """
  sizes = {**CONFIG_IMAGE_SIZES, **(image_sizes or {})}
  result = []
  for model_id in model_ids:
    model_id = bs.normalize_model_id(model_id)
    if model_id not in sizes:  # 143L has no config file
      raise ValueError(f'No image size for SpineNet-{model_id}; pass image_sizes={{{model_id!r}: N}}.')
    config = SpineNetConfig.from_model_id(model_id)
    size = sizes[model_id]
    table = block_table(config, (size, size), f'SpineNet-{model_id}')
    levels = range(2, config.max_level + 1)
    result.append({
        'model': table.label,
        'image_size': size,
        'filter_size_scale': config.filter_size_scale,
        'resample_alpha': config.resample_alpha,
        'block_repeats': config.block_repeats,
        'endpoints_num_filters': config.endpoints_num_filters,
        'filters_per_level': {lvl: bs.block_filters(lvl, config.filter_size_scale)
                              for lvl in levels},
        # Output channels of the blocks at each level (bottlenecks 4x filters, residuals 1x).
        'block_channels_per_level': _channels_per_level(table),
        'params': table.total_params,
        'stem_params': table.subtotal('stem')[0],
        'block_params': table.subtotal('block')[0],
        'endpoint_params': table.subtotal('endpoint')[0],
        'gmacs': table.gmacs,
        'block_gmacs': table.subtotal('block')[1] / 1e9,
    })
  return result


def _channels_per_level(table: BlockTable) -> dict[int, tuple[int, ...]]:
  channels: dict[int, set] = {}
  for r in table.blocks:
    channels.setdefault(r.level, set()).add(r.channels)
  return {lvl: tuple(sorted(c)) for lvl, c in sorted(channels.items())}


# --- Editing specs -------------------------------------------------------------------------------

def edit_block(specs: Sequence[bs.BlockSpec], index: int,
               **changes: Any) -> tuple[bs.BlockSpec, ...]:
  """A copy of `specs` with block `index` changed: `edit_block(specs, 3, input_offsets=(2, 3))`.

  Not validated here: a SpineNetConfig built from the result raises a BlockSpecError naming the
  block.
  """
  specs = list(bs.build_block_specs(specs))
  if 'input_offsets' in changes:
    changes['input_offsets'] = tuple(changes['input_offsets'])
  specs[index] = dataclasses.replace(specs[index], **changes)
  return tuple(specs)


def swap_blocks(specs: Sequence[bs.BlockSpec], i: int, j: int) -> tuple[bs.BlockSpec, ...]:
  """A copy of `specs` with blocks `i` and `j` exchanged in the order (their parents unchanged)."""
  specs = list(bs.build_block_specs(specs))
  specs[i], specs[j] = specs[j], specs[i]
  return tuple(specs)


# --- Text formatting -----------------------------------------------------------------------------

def _render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
            right: Sequence[bool]) -> str:
  if markdown:
    sep = ['---:' if r else '---' for r in right]
    lines = [headers, sep, *rows]
    return '\n'.join('| ' + ' | '.join(str(c) for c in line) + ' |' for line in lines)
  widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

  def fmt(line):
    return '  '.join(str(c).rjust(w) if r else str(c).ljust(w)
                     for c, w, r in zip(line, widths, right)).rstrip()
  return '\n'.join([fmt(headers), fmt(['-' * w for w in widths]), *(fmt(x) for x in rows)])


_TABLE_HEADERS = ('row', 'feat', 'level', 'type', 'parents', 'resampling', 'merged', 'output',
                  'filters', 'shape', 'params', 'MMACs')
_TABLE_RIGHT = (False, True, True, False, False, False, False, False, True, False, True, True)


def _table_cells(r: TableRow) -> list[str]:
  resample = ', '.join(f'f{p}:{k}' for p, k in zip(r.parents, r.resample)) if r.parents else (
      ', '.join(r.resample))
  return [r.name, '' if r.feature is None else str(r.feature), f'L{r.level}', r.block_fn or '',
          ', '.join(map(str, r.parents)), resample, ', '.join(map(str, r.merged)),
          'yes' if r.is_output else '', str(r.filters), 'x'.join(map(str, r.out_shape)),
          f'{r.params:,}', f'{r.macs / 1e6:,.1f}']


def format_table(table: BlockTable, markdown: bool = False) -> str:
  """The rows, then subtotals for stem / blocks / endpoints and the TOTAL, as text or markdown."""
  rows = [_table_cells(r) for r in table.rows]
  blank = [''] * (len(_TABLE_HEADERS) - 3)
  for kind in ('stem', 'block', 'endpoint'):
    params, macs = table.subtotal(kind)
    rows.append([f'{kind}s', *blank, f'{params:,}', f'{macs / 1e6:,.1f}'])
  rows.append(['TOTAL', *blank, f'{table.total_params:,}', f'{table.total_macs / 1e6:,.1f}'])
  title = (f'{table.label} at {table.input_size[0]}x{table.input_size[1]}: '
           f'{table.total_params:,} parameters, {table.gmacs:.2f} GMACs')
  return title + '\n\n' + _render(_TABLE_HEADERS, rows, markdown, _TABLE_RIGHT)


def format_comparison(rows: Sequence[dict], markdown: bool = False) -> str:
  """`compare_models` output as one line per model."""
  headers = ('model', 'input', 'scale', 'alpha', 'repeats', 'endpoint ch', 'filters L2..L7',
             'block channels by level', 'params', 'GMACs', 'block GMACs')
  cells = [[r['model'], str(r['image_size']), f'{r["filter_size_scale"]:g}',
            f'{r["resample_alpha"]:g}', str(r['block_repeats']), str(r['endpoints_num_filters']),
            '/'.join(str(f) for f in r['filters_per_level'].values()),
            ' '.join(f'L{lvl}:' + '/'.join(map(str, ch))
                     for lvl, ch in r['block_channels_per_level'].items()), f'{r["params"]:,}',
            f'{r["gmacs"]:.2f}', f'{r["block_gmacs"]:.2f}'] for r in rows]
  right = (False, True, True, True, True, True, False, False, True, True, True)
  return _render(headers, cells, markdown, right)
