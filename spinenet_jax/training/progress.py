"""Progress reports whose ETA accounts for phases whose steps cost differently.

Progressive resizing trains the first steps at a small input size: a step there costs a fraction
of a full-size one, so a steps/s rate measured early would promise far too little remaining time.
The ETA sums, over the phases still ahead, their remaining steps times that phase's seconds per
step: measured where the phase has run, else a measured phase's scaled by the pixel ratio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

Phase = tuple[int, int, tuple[int, int]]   # [start, end) steps at input size (H, W)


class Progress:
  """Step timing per phase and an ETA over what remains (`phases` cover [0, total))."""

  def __init__(self, phases: Sequence[Phase], start: int = 0, clock=time.time):
    self.phases = [(a, b, tuple(size)) for a, b, size in phases]
    self.total = self.phases[-1][1]
    self._clock = clock
    self._intervals: dict[tuple[int, int], list[tuple[float, int]]] = {}
    self._last_step, self._last_time = start, clock()

  def _size(self, step: int) -> tuple[int, int]:
    return next(size for a, b, size in self.phases if a <= step < b)

  def mark(self, step: int) -> None:
    """Every step since the previous mark is done (call at logging points, within one phase;
    call `restart` when a phase begins, so compilation is not counted as steps)."""
    now = self._clock()
    if step > self._last_step:
      self._intervals.setdefault(self._size(step - 1), []).append(
          (now - self._last_time, step - self._last_step))
    self._last_step, self._last_time = step, now

  def restart(self, step: int) -> None:
    """Time from here (a phase start, after its compilation)."""
    self._last_step, self._last_time = step, self._clock()

  def seconds_per_step(self, size: tuple[int, int]) -> float | None:
    """Measured seconds per step at `size`, else another size's scaled by pixels, else None."""
    rates = {s: sum(t for t, _ in iv) / sum(n for _, n in iv)
             for s, iv in self._intervals.items()}
    size = tuple(size)
    if size in rates:
      return rates[size]
    if not rates:
      return None
    ref = max(rates, key=lambda s: sum(n for _, n in self._intervals[s]))
    return rates[ref] * (size[0] * size[1]) / (ref[0] * ref[1])

  def eta_seconds(self, step: int) -> float | None:
    """Seconds from `step` to the end, or None before any step was timed."""
    total = 0.0
    for a, b, size in self.phases:
      remaining = b - max(a, step)
      if remaining <= 0:
        continue
      rate = self.seconds_per_step(size)
      if rate is None:
        return None
      total += remaining * rate
    return total

  def report(self, step: int) -> str:
    eta = self.eta_seconds(step)
    text = 'unknown' if eta is None else '{}:{:02d}:{:02d}'.format(
        int(eta // 3600), int(eta % 3600 // 60), int(eta % 60))
    return f'step {step}/{self.total} ({100.0 * step / self.total:.1f}%), ETA {text}'
