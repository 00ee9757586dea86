"""Scaling laws: plan and run sweeps, collect runs, fit laws with bootstrap intervals, predict
the compute-optimal model and data size, plot, compare and validate.

Entry point: `python -m jaxscale.scaling --help`.
"""
