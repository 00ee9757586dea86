"""Solvers behind every law form: the log-space objective, the vmapped Levenberg-Marquardt
solver, multi-start search with its bootstrap, and percentile intervals."""
