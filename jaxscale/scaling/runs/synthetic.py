"""Run tables drawn from a known Chinchilla law plus noise: for checking that fits recover it."""

import numpy as np

from jaxscale.scaling.laws import approach3

# Hoffmann et al. 2022's published fit, a realistic default truth.
HOFFMANN = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}


def isoflop_runs(params=None, budgets=(1e18, 1e19, 1e20, 1e21), sizes_per_budget=7, span=8.0,
                 noise=0.005, seed=0, flops_per_param_token=6.0) -> dict:
  """For each budget, sizes log-spaced over a factor `span` each side of the true N_opt; D from
  C = 6 N D; loss = L(N, D) times lognormal noise of relative size `noise`."""
  params = params or HOFFMANN
  rows = []
  for budget in budgets:
    n_opt, _ = approach3.compute_optimal(params, budget, flops_per_param_token)
    for n in n_opt * np.geomspace(1 / span, span, sizes_per_budget):
      rows.append((n, budget / (flops_per_param_token * n), budget, budget))
  n, d, c, budget = map(np.array, zip(*rows))
  return _with_loss(params, {'N': n, 'D': d, 'C': c, 'budget': budget}, noise, seed)


def grid_runs(params=None, sizes=np.geomspace(1e7, 1e10, 8), tokens=np.geomspace(1e8, 1e11, 8),
              noise=0.005, seed=0) -> dict:
  """Every size with every token count."""
  params = params or HOFFMANN
  n, d = (grid.ravel() for grid in np.meshgrid(sizes, tokens))
  return _with_loss(params, {'N': n, 'D': d, 'C': 6.0 * n * d}, noise, seed)


def _with_loss(params, runs, noise, seed):
  rng = np.random.default_rng(seed)
  clean = approach3.loss(params, runs['N'], runs['D'])
  return {**runs, 'loss': clean * np.exp(noise * rng.standard_normal(len(clean)))}
