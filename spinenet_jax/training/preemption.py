"""Stop requests (SIGTERM from a scheduler or a preempted VM, or Ctrl-C) turned into a flag.

The training loop polls `stop_requested()` at step boundaries, saves a checkpoint and returns, so a
preempted job loses nothing and the same command resumes it. With several processes the flag is
agreed on (any process asked to stop) at sync points, so all of them save the same step.
"""

from __future__ import annotations

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class StopGuard:
  """Context manager catching SIGTERM/SIGINT while training runs (restores handlers on exit)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._requested = False
    self._previous = {}

  def _handler(self, signum, frame):
    if self._requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    log.warning('Received %s: saving a checkpoint at the end of this step, then stopping.',
                signal.Signals(signum).name)
    self._requested = True

  def __enter__(self) -> StopGuard:
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:       # not the main thread (e.g. a notebook worker): no signal handling
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def request(self) -> None:
    self._requested = True

  def stop_requested(self, sync: bool) -> bool:
    """Whether to stop now. With several processes only `sync` calls (a collective: made at the
    same step on every process) can say yes, and they agree: some process was asked to stop."""
    if jax.process_count() == 1:
      return self._requested
    if not sync:
      return False
    flags = multihost_utils.process_allgather(np.array([self._requested]))
    return bool(np.any(flags))
