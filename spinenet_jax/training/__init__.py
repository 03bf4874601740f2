"""Training: optimizer and schedules, train state, train/predict steps, checkpoints, the loop."""
