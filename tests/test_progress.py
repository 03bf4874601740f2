"""The ETA accounts for phases whose steps cost differently (progressive resizing)."""

from spinenet_jax.training import progress, settings
from training_helpers import tiny_config


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_eta_scales_unmeasured_phases_by_pixels_then_uses_their_measured_rate():
  clock = Clock()
  timer = progress.Progress([(0, 1200, (128, 128)), (1200, 1600, (256, 256))], clock=clock)
  assert timer.eta_seconds(0) is None
  clock.now = 35.0                          # 100 steps at 0.35 s
  timer.mark(100)
  # 1100 small steps at 0.35 s + 400 large ones at 4 x 0.35 s (4x the pixels).
  assert abs(timer.eta_seconds(100) - (1100 * 0.35 + 400 * 1.4)) < 1e-9
  assert timer.report(100) == 'step 100/1600 (6.2%), ETA 0:15:45'
  # A steps/s rate alone would say (1500 / 100) * 35 s = 525 s: the old, wrong estimate.
  clock.now = 35.0 + 1100 * 0.35
  timer.mark(1200)
  clock.now += 60.0                         # compiling the new phase is not a step
  timer.restart(1200)
  clock.now += 100 * 2.0                    # the large steps really cost 2 s
  timer.mark(1300)
  assert abs(timer.eta_seconds(1300) - 300 * 2.0) < 1e-9


def test_phases_of_a_config():
  config = tiny_config(low_res_steps=2, low_res_image_size=(64, 64))
  assert settings.phases(config) == [(0, 2, (64, 64)), (2, 6, (128, 128))]
  assert settings.phases(tiny_config()) == [(0, 6, (128, 128))]
