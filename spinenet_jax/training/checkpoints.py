"""Training checkpoints with orbax: periodic saves, keep N, resume from the newest readable one.

A checkpoint holds the whole `TrainState` (step, parameters, batch statistics, optimizer state,
RNG) and a small json `meta` (data position, global batch size). Orbax writes each step into a
temporary folder and renames it when complete, so a run killed mid-save leaves only a temporary
folder: it is reported and removed, and the previous step is used. A finished checkpoint that
cannot be read (a truncated or deleted file) is reported by step and the next older one is tried.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpoints:
  """Saves and restores (state, meta) pairs under `directory`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._report_incomplete()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def _report_incomplete(self) -> None:
    for path in sorted(glob.glob(os.path.join(self.directory, '*tmp*'))):
      log.warning('Ignoring incomplete checkpoint %s (the run stopped while writing it); it will '
                  'be removed and the previous checkpoint used.', path)

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest readable checkpoint, arrays placed as in `like`; None if there
    is no checkpoint.

    `like` is a state (or tree of jax.ShapeDtypeStruct) with the target shapes and shardings.
    Raises RuntimeError when checkpoints exist but none can be restored (starting afresh would
    silently throw their work away, and the new saves would rotate them out).
    """
    abstract = jax.tree_util.tree_map(_abstract, like)
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to an older one
        log.warning('Checkpoint at step %d in %s cannot be read (%s: %s); trying the previous one.',
                    step, self.directory, type(e).__name__, str(e)[:300])
        continue
      log.info('Restored checkpoint of step %d from %s.', step, self.directory)
      return restored['state'], dict(restored['meta'])
    if steps:
      raise RuntimeError(
          f'None of the checkpoints in {self.directory} (steps {steps}) can be restored into this '
          "config's train state (see the warnings above: unreadable files, or a model or optimizer "
          'of another shape). Fix the config to match them, or move them away to start afresh.')
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
