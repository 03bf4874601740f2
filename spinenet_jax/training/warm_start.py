"""Warm start: a model checkpoint's weights loaded into a freshly initialized model where they fit.

Fine-tuning a COCO model on a dataset with other classes changes the shape of the class prediction
conv only, and a backbone-only checkpoint (model.json type 'spinenet', e.g. a Mask R-CNN or
ImageNet backbone) has no head at all. So every variable (params and batch_stats) whose path and
shape match is loaded, the others keep their fresh initialization, and both are listed in the log.
A checkpoint that fits little of the backbone (another model id, say) is an error, not a cold start.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from spinenet_jax import model_io

log = logging.getLogger(__name__)

COLLECTIONS = ('params', 'batch_stats')
# Where every detector holds its SpineNet (`RetinaNet` names its backbone module 'backbone');
# the variables of a 'spinenet' model checkpoint go there.
BACKBONE = 'backbone'
_LISTED = 40   # re-initialized / ignored variables listed in full; the rest are counted


@dataclasses.dataclass
class WarmStartReport:
  """What a warm start loaded. Paths are 'collection/module/.../leaf'."""
  loaded: list[str]          # loaded from the checkpoint
  reinitialized: list[str]   # 'path: checkpoint (shape), model (shape)', 'path: not in checkpoint'
  ignored: list[str]         # checkpoint variables the model does not have: 'path (shape)'
  loaded_values: int         # scalar parameter values (params collection) loaded ...
  total_values: int          # ... of the model's

  def summary(self, directory: str) -> str:
    """A readable account: counts, then the re-initialized and ignored variables."""
    total = len(self.loaded) + len(self.reinitialized)
    lines = [(f'init_checkpoint {directory}: loaded {len(self.loaded)} of {total} variables '
              f'({self.loaded_values:,} of {self.total_values:,} parameter values); '
              f'{len(self.reinitialized)} keep their fresh initialization.')]
    for title, items in (('re-initialized', self.reinitialized),
                         ('in the checkpoint but not in the model (ignored)', self.ignored)):
      if items:
        lines.append(f'{len(items)} {title}:')
        lines += [f'  {item}' for item in items[:_LISTED]]
        lines += [f'  ... and {len(items) - _LISTED} more'] if len(items) > _LISTED else []
    return '\n'.join(lines)


def checkpoint_variables(model_config: Any, variables: Mapping) -> dict:
  """{collection: tree} of a loaded model checkpoint, laid out as in a detector: a backbone-only
  ('spinenet') checkpoint's variables are moved under `BACKBONE`."""
  tree = {c: variables.get(c, {}) for c in COLLECTIONS}
  if model_io.model_type(model_config) == 'spinenet':
    tree = {c: {BACKBONE: v} if v else {} for c, v in tree.items()}
  return tree


def _flat(tree: Mapping) -> dict[tuple, Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _name(path: tuple) -> str:
  return '/'.join(str(k) for k in path)


def merge(fresh: Mapping, checkpoint: Mapping) -> tuple[dict, WarmStartReport]:
  """`fresh` ({collection: tree}) with every leaf that `checkpoint` has at the same path and shape
  replaced by the checkpoint's (cast to the fresh leaf's dtype). Returns (variables, report)."""
  mine, theirs = _flat(fresh), _flat(checkpoint)
  merged, loaded, reinitialized, loaded_values = {}, [], [], 0
  for path, value in mine.items():
    other = theirs.get(path)
    if other is not None and tuple(np.shape(other)) == tuple(value.shape):
      merged[path] = np.asarray(other).astype(value.dtype)
      loaded.append(_name(path))
      loaded_values += value.size if path[0] == 'params' else 0
      continue
    merged[path] = value
    reinitialized.append(f'{_name(path)}: ' + ('not in checkpoint' if other is None else
                         f'checkpoint {tuple(np.shape(other))}, model {tuple(value.shape)}'))
  ignored = [f'{_name(p)} {tuple(np.shape(v))}' for p, v in theirs.items() if p not in mine]
  total_values = sum(v.size for p, v in mine.items() if p[0] == 'params')
  tree = traverse_util.unflatten_dict(merged)
  return ({c: tree.get(c, {}) for c in fresh},
          WarmStartReport(loaded, reinitialized, ignored, loaded_values, total_values))


def _in_backbone(entry: str) -> bool:
  return entry.split('/')[1] == BACKBONE


def check_useful(report: WarmStartReport, directory: str) -> None:
  """Raises ValueError, naming `directory` and a few mismatches, unless most (over half) of the
  backbone's variables loaded (of the whole model's, for a model without a backbone scope). Not
  "anything loaded": SpineNet's 64-filter stem and the box predictor's bias fit every model id,
  so a checkpoint of another model would otherwise pass with its stem alone."""
  loaded = [e for e in report.loaded if _in_backbone(e)]
  missed = [e for e in report.reinitialized if _in_backbone(e)]
  if not loaded and not missed:   # no backbone scope: judge the whole model
    loaded, missed = report.loaded, report.reinitialized
  if len(loaded) > len(missed):
    return
  examples = [e for e in missed if ': checkpoint (' in e] or missed
  raise ValueError(
      f'init_checkpoint {directory} does not fit the configured model: only {len(loaded)} of '
      f'{len(loaded) + len(missed)} backbone variables have the same path and shape (another '
      "model id or filter scale? compare config.model with the checkpoint's model.json). For "
      'example:\n  ' + '\n  '.join(examples[:5]))


def load(fresh: Mapping, directory: str) -> tuple[dict, WarmStartReport]:
  """Loads the model checkpoint `directory` into `fresh` ({'params', 'batch_stats'}) where it fits;
  logs what was re-initialized (a warning) and returns (variables, report). Raises ValueError when
  most of the backbone does not fit, FileNotFoundError when `directory` is not a model
  checkpoint."""
  model_config, variables, _ = model_io.load_model(directory)
  merged, report = merge(fresh, checkpoint_variables(model_config, variables))
  check_useful(report, directory)
  if report.reinitialized or report.ignored:
    log.warning(report.summary(directory))
  else:
    log.info('Initialized all %d variables from model checkpoint %s.', len(report.loaded),
             directory)
  return merged, report
