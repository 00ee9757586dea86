"""The trainer: the experiment build, the pure compiled steps, the optimizer and the loop."""
