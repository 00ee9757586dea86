"""Run tables drawn from known laws plus noise: for checking that fits recover them."""

import numpy as np

from jaxscale.scaling.laws import approach3, curve_fit

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


def frontier_runs(params=None, budgets=np.geomspace(1e17, 1e21, 6), sizes_per_budget=5,
                  span=4.0, curvature=0.02, noise=0.005, seed=0) -> dict:
  """IsoFLOP runs whose best loss follows L*(C) = E + k C^-gamma exactly, with an off-optimum
  penalty `curvature` * (ln N / N_opt)^2 that no sum of power laws in N and D reproduces.
  E = 0 makes L* a pure power law."""
  params = params or {'E': 1.8, 'k': 2.0e3, 'gamma': 0.16}
  rows = []
  for budget in budgets:
    n_opt = 0.1 * np.sqrt(budget / 6.0)
    for n in n_opt * np.geomspace(1 / span, span, sizes_per_budget):
      best = params['E'] + params['k'] * budget ** -params['gamma']
      rows.append((n, budget / (6.0 * n), budget, best * (1 + curvature * np.log(n / n_opt) ** 2)))
  n, d, c, loss = map(np.array, zip(*rows))
  rng = np.random.default_rng(seed)
  return {'N': n, 'D': d, 'C': c, 'budget': c,
          'loss': loss * np.exp(noise * rng.standard_normal(len(loss)))}


def kaplan_grid_runs(params=None, sizes=np.geomspace(1e6, 1e9, 6), tokens=np.geomspace(1e8, 1e11, 6),
                     noise=0.005, seed=0) -> dict:
  """Every non-embedding size with every token count, from Kaplan et al.'s L(N, D) (their
  published constants by default); N counts 10% embedding parameters on top."""
  params = params or {'N_c': 8.8e13, 'D_c': 5.4e13, 'alpha_N': 0.076, 'alpha_D': 0.095}
  n, d = (grid.ravel() for grid in np.meshgrid(sizes, tokens))
  loss = curve_fit.kaplan_loss(params, n, d)
  rng = np.random.default_rng(seed)
  return {'N': 1.1 * n, 'N_nonembed': n, 'D': d, 'C': 6.0 * 1.1 * n * d,
          'loss': loss * np.exp(noise * rng.standard_normal(len(loss)))}


def repeated_data_runs(params=None, sizes=np.geomspace(1e7, 1e9, 5),
                       tokens=np.geomspace(1e9, 3e11, 6), unique_tokens=4e9, noise=0.003,
                       seed=0) -> dict:
  """A grid trained on `unique_tokens` distinct tokens, repeated for longer runs: losses from
  Muennighoff et al.'s data-constrained law (Hoffmann's constants, R* = 15)."""
  params = params or {**HOFFMANN, 'R_star': 15.0}
  n, d = (grid.ravel() for grid in np.meshgrid(sizes, tokens))
  unique = np.minimum(d, unique_tokens)
  loss = curve_fit.data_constrained_loss(params, n, d, unique)
  rng = np.random.default_rng(seed)
  return {'N': n, 'D': d, 'C': 6.0 * n * d, 'unique_tokens': unique,
          'loss': loss * np.exp(noise * rng.standard_normal(len(loss)))}
