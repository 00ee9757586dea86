"""Compute-optimal allocation power laws N_opt = N_coef C^a and D_opt = D_coef C^b.

Approaches 1 and 2 of Hoffmann et al. 2022 both end by fitting these lines in log-log space to
(C, N_opt, D_opt) points they extract from the runs; they differ only in how they find the points.
"""

import numpy as np


def fit(compute, n_opt, d_opt, counts=None) -> dict:
  """Least-squares lines through (log C, log N_opt) and (log C, log D_opt).

  `counts` repeat points (bootstrap resamples). Needs two distinct compute values at least.
  """
  log_c, log_n, log_d = np.log(compute), np.log(n_opt), np.log(d_opt)
  if counts is not None:
    log_c, log_n, log_d = (np.repeat(values, counts) for values in (log_c, log_n, log_d))
  if len(np.unique(log_c)) < 2:
    raise ValueError(
        f'The compute-optimal power laws need optimal points at 2 or more compute values; got '
        f'{len(np.unique(log_c))}.')
  a, log_n_coef = np.polyfit(log_c, log_n, 1)
  b, log_d_coef = np.polyfit(log_c, log_d, 1)
  return {'a': float(a), 'b': float(b), 'N_coef': float(np.exp(log_n_coef)),
          'D_coef': float(np.exp(log_d_coef))}


def optimal_sizes(params: dict, compute):
  """(N_opt, D_opt) at `compute` from fitted allocation laws."""
  compute = np.asarray(compute, float)
  return params['N_coef'] * compute ** params['a'], params['D_coef'] * compute ** params['b']
