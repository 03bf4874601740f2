"""SpineNet block specifications and scaling, as data.

A SpineNet is a learned permutation of blocks: each block has a feature level, a block type and two
parents (indices into the list of features built so far: 0 and 1 are the stem outputs, block i becomes
feature i + 2). The official permutation and scaling map are those of the TPU detection code.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

BLOCK_FNS = ('bottleneck', 'residual')

# Level -> base number of filters of a block at that level (before `filter_size_scale`).
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}

# The stem: a 7x7/s2 conv to this many (unscaled) filters, then two bottleneck groups at level 2.
STEM_CONV_FILTERS = 64
NUM_STEM_FEATURES = 2
STEM_BLOCK_FN = 'bottleneck'


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One scale-permuted block: its level, block type, two parent features and output flag."""
  level: int
  block_fn: str
  input_offsets: tuple[int, int]
  is_output: bool


# (level, block_fn, (input_offset0, input_offset1), is_output), as found by the paper's search.
_OFFICIAL_BLOCK_SPECS = (
    (2, 'bottleneck', (0, 1), False),
    (4, 'residual', (0, 1), False),
    (3, 'bottleneck', (2, 3), False),
    (4, 'bottleneck', (2, 4), False),
    (6, 'residual', (3, 5), False),
    (4, 'bottleneck', (3, 5), False),
    (5, 'residual', (6, 7), False),
    (7, 'residual', (6, 8), False),
    (5, 'bottleneck', (8, 9), False),
    (5, 'bottleneck', (8, 10), False),
    (4, 'bottleneck', (5, 10), True),
    (3, 'bottleneck', (4, 10), True),
    (5, 'bottleneck', (7, 12), True),
    (7, 'bottleneck', (5, 14), True),
    (6, 'bottleneck', (12, 14), True),
)
OFFICIAL_BLOCK_SPECS: tuple[BlockSpec, ...] = tuple(
    BlockSpec(level, fn, tuple(offsets), out) for level, fn, offsets, out in _OFFICIAL_BLOCK_SPECS)


@dataclasses.dataclass(frozen=True)
class Scaling:
  endpoints_num_filters: int
  filter_size_scale: float
  resample_alpha: float
  block_repeats: int


SCALING_MAP = {
    '49S': Scaling(128, 0.65, 0.5, 1),
    '49': Scaling(256, 1.0, 0.5, 1),
    '96': Scaling(256, 1.0, 0.5, 2),
    '143': Scaling(256, 1.0, 1.0, 3),
    '143L': Scaling(256, 1.3, 1.0, 3),
    '190': Scaling(512, 1.3, 1.0, 4),
}


def normalize_model_id(model_id: str) -> str:
  """Returns the canonical spelling of a model id ('49s' -> '49S'), or raises ValueError."""
  key = str(model_id).strip().upper()
  if key not in SCALING_MAP:
    raise ValueError(f'Unknown SpineNet model_id {model_id!r}; expected one of {sorted(SCALING_MAP)}.')
  return key


def scaling_for(model_id: str) -> Scaling:
  return SCALING_MAP[normalize_model_id(model_id)]


def block_filters(level: int, filter_size_scale: float) -> int:
  """Filters of a block at `level`; `int` truncates as the official code does (49S: L3 = 83)."""
  return int(FILTER_SIZE_MAP[level] * filter_size_scale)


def block_output_channels(block_fn: str, filters: int) -> int:
  return 4 * filters if block_fn == 'bottleneck' else filters


class BlockSpecError(ValueError):
  """A block-spec permutation that cannot form a SpineNet."""


def _as_spec(index: int, entry) -> BlockSpec:
  if isinstance(entry, BlockSpec):
    return entry
  try:
    level, block_fn, offsets, is_output = entry
    offsets = tuple(offsets)
  except (TypeError, ValueError) as e:
    raise BlockSpecError(
        f'block {index}: expected (level, block_fn, (offset0, offset1), is_output), got {entry!r}'
    ) from e
  return BlockSpec(level, block_fn, offsets, is_output)


def build_block_specs(entries: Iterable | None = None) -> tuple[BlockSpec, ...]:
  """Turns tuples or BlockSpecs into BlockSpecs (the official specs when `entries` is None)."""
  if entries is None:
    return OFFICIAL_BLOCK_SPECS
  return tuple(_as_spec(i, e) for i, e in enumerate(entries))


def validate_block_specs(specs: Sequence[BlockSpec], min_level: int, max_level: int) -> None:
  """Raises BlockSpecError naming the first block that breaks a rule of the SpineNet topology."""
  if not specs:
    raise BlockSpecError('block_specs is empty.')
  if not (min(FILTER_SIZE_MAP) <= min_level <= max_level <= max(FILTER_SIZE_MAP)):
    raise BlockSpecError(
        f'min_level={min_level}, max_level={max_level}: need '
        f'{min(FILTER_SIZE_MAP)} <= min_level <= max_level <= {max(FILTER_SIZE_MAP)}.')
  output_levels: dict[int, int] = {}
  for i, spec in enumerate(specs):
    where = f'block {i} {spec}'
    if not isinstance(spec.level, int) or isinstance(spec.level, bool) or spec.level not in FILTER_SIZE_MAP:
      raise BlockSpecError(f'{where}: level must be an int in {sorted(FILTER_SIZE_MAP)}.')
    if spec.block_fn not in BLOCK_FNS:
      raise BlockSpecError(f'{where}: block_fn must be one of {BLOCK_FNS}.')
    if len(spec.input_offsets) != 2:
      raise BlockSpecError(f'{where}: needs exactly two input offsets.')
    num_existing = NUM_STEM_FEATURES + i
    for offset in spec.input_offsets:
      if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < num_existing:
        raise BlockSpecError(
            f'{where}: input offset {offset!r} is out of range; block {i} can only use features '
            f'0..{num_existing - 1} (0 and 1 are the stem, block j is feature j + 2).')
    if not isinstance(spec.is_output, bool):
      raise BlockSpecError(f'{where}: is_output must be a bool.')
    if spec.is_output:
      if spec.level in output_levels:
        raise BlockSpecError(
            f'{where}: duplicate output level {spec.level} (block {output_levels[spec.level]} '
            'already outputs it).')
      output_levels[spec.level] = i
      if not min_level <= spec.level <= max_level:
        # The official code only logs this (since 2021); the block is still built.
        logging.warning('%s: output level outside [%d, %d] is built but not an endpoint.',
                        where, min_level, max_level)
  missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in output_levels]
  if missing:
    raise BlockSpecError(
        f'no output block for level(s) {missing}; endpoints {min_level}..{max_level} each need one '
        'block with is_output=True.')
