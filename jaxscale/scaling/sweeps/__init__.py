"""Planning and running sweeps: the planner, run configs and shapes, WSD cooldown branches, the
launcher, and the config of a compute-optimal run emitted from a fit."""
