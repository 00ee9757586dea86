"""Chinchilla Approach 1: the lower envelope of loss against compute.

Every point (a run's end, or with `collect --all-points` every eval of every run) is placed at
its training compute C; the points on the lower envelope say which model size N and token count
D reached the lowest loss for that much compute. Power laws through them give N_opt(C) and
D_opt(C), and L(C) = E + k C^-gamma through their losses gives the loss frontier (when the
envelope has enough points for it). Hoffmann et al. interpolate each run's curve on a grid of
FLOPs first; with points taken at each eval, the envelope of the points themselves is the same
thing sampled at the evals.

Envelope points reached by the smallest or the largest model are left out (the optimum may lie
beyond the sizes tried). The bootstrap resamples points with replacement and redoes everything on
each resample.
"""

import numpy as np

from jaxscale.scaling.laws import allocation, envelope, power_law_fit
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals, parametric_fit

MIN_ENVELOPE_POINTS = 3


def fit(runs, fixed=None, num_bootstrap=1000, seed=0) -> dict:
  runs = table_lib.checked_runs(runs)
  on_envelope = _interior(runs, envelope.lower_envelope(runs['C'], runs['loss']))
  if on_envelope.sum() < MIN_ENVELOPE_POINTS or len(np.unique(runs['N'][on_envelope])) < 2:
    raise ValueError(
        f'Approach 1 needs at least {MIN_ENVELOPE_POINTS} points on the loss-vs-compute envelope '
        f'from 2 or more model sizes other than the smallest and largest; got '
        f'{on_envelope.sum()} points from {len(np.unique(runs["N"][on_envelope]))} sizes.')
  frontier = envelope_table(runs, on_envelope)
  loss_law = power_law_fit.fit_if_enough('C', frontier['C'], frontier['loss'], fixed)
  record = {
      'law': 'chinchilla', 'approach': 1,
      **allocation.fit(frontier['C'], frontier['N'], frontier['D']),
      'frontier': loss_law and loss_law.params, 'num_points': table_lib.num_rows(runs),
      'envelope': [dict(zip(frontier, values)) for values in zip(*frontier.values())],
      'fixed': fixed or {}}
  if num_bootstrap:
    record.update(_bootstrap(runs, loss_law, num_bootstrap, seed))
  return record


def _interior(runs, on_envelope) -> np.ndarray:
  """Drops envelope points reached by the smallest or largest model: there the true optimum may
  lie beyond the sizes tried, and keeping them would bend the fitted exponents."""
  return on_envelope & (runs['N'] > runs['N'].min()) & (runs['N'] < runs['N'].max())


def envelope_table(runs, mask) -> dict:
  return {name: [float(v) for v in runs[name][mask]] for name in ('C', 'N', 'D', 'loss')}


def _bootstrap(runs, loss_law, num_resamples, seed) -> dict:
  n = table_lib.num_rows(runs)
  counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num_resamples)
  masks = np.array([_interior(runs, envelope.resampled_envelope(runs['C'], runs['loss'], row))
                    for row in counts])
  loss_thetas = np.full((num_resamples, 3), np.nan)
  if loss_law:
    log_c, log_loss = np.log(runs['C'])[:, None], np.log(runs['loss'])
    loss_thetas = parametric_fit.refit_batch(loss_law, log_c, log_loss, counts * masks)
  samples, failed = [], 0
  for row, mask, theta in zip(counts, masks, loss_thetas):
    try:
      sizes = allocation.fit(runs['C'][mask], runs['N'][mask], runs['D'][mask], row[mask])
    except ValueError:
      failed += 1  # This resample kept a single envelope compute value; no slopes from it.
      continue
    samples.append({**sizes, **power_law_fit.prefixed_params('frontier', loss_law, theta)})
  names = ('a', 'b', 'N_coef', 'D_coef', 'frontier.E', 'frontier.k', 'frontier.gamma')
  summary = intervals.summarise(samples, names, num_failed=failed,
                                why_failed='the envelope kept a single compute value')
  summary['num_frontier_refits_failed'] = parametric_fit.num_failed(loss_thetas) if loss_law else 0
  return summary
