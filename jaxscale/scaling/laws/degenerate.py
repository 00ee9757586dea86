"""Fits that converged to nonsense: flagged by name in fit.json and by the CLI, never silent.

A fit is degenerate when an exponent sits at the edge of the plausible range (the optimiser ran
off to where the data cannot pin it), when the irreducible loss E collapses to zero, or when E
lies at or above the lowest loss the data already reached (the law then says more compute buys
nothing). Pinned parameters are the user's, and are not judged.
"""

import numpy as np

EXPONENTS = ('alpha', 'beta', 'gamma', 'alpha_N', 'alpha_D')
EXPONENT_RANGE = (0.02, 1.0)   # Published LM exponents (0.05 to 0.6) lie well inside this.
E_COLLAPSE_FRACTION = 1e-3     # E below this fraction of the least loss counts as zero.


def flags(params: dict, min_loss: float, fixed=None) -> list[str]:
  """One sentence per degenerate parameter (empty for a healthy fit)."""
  fixed = fixed or {}
  found = []
  low, high = EXPONENT_RANGE
  for name in EXPONENTS:
    value = params.get(name)
    if name in fixed or value is None or not np.isfinite(value):
      continue
    if not low < value < high:
      found.append(f'exponent {name} = {value:.3g} is outside ({low}, {high}): at a bound of '
                   'what the data can determine')
  e = params.get('E')
  if 'E' not in fixed and e is not None and np.isfinite(e):
    if e < E_COLLAPSE_FRACTION * min_loss:
      found.append(f'E = {e:.3g} collapsed to zero (the least loss in the data is '
                   f'{min_loss:.4g}); consider --fix E=... if the least loss is known')
    elif e >= min_loss:
      found.append(f'E = {e:.4g} is at or above the least loss the data reached ({min_loss:.4g})')
  return found


def frontier_params(record: dict) -> dict:
  """The parameters a record's flags judge: its own, or its loss frontier's."""
  if record.get('approach') in (1, 2):
    return dict(record.get('frontier') or {})
  return record
