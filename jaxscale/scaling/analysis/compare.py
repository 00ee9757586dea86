"""Effective compute multiplier of a variant (new architecture, data, optimizer) over a baseline.

The baseline's loss-vs-compute envelope gets a frontier law L(C) = E + k C^-gamma. Each point on
the variant's envelope, (C_v, L_v), is matched to the baseline compute C_b that the law says
reaches L_v; C_b / C_v is how many times more compute the baseline would need. The reported
multiplier is the geometric mean over the variant's envelope points, with a bootstrap interval
that resamples both tables' runs (and refits the baseline frontier each time).
"""

import numpy as np

from jaxscale.scaling.laws import envelope, power_law_fit
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals, parametric_fit


def compare(baseline, variant, fixed=None, num_bootstrap=1000, seed=0) -> dict:
  baseline, variant = (_checked(runs, name) for runs, name in
                       ((baseline, 'baseline'), (variant, 'variant')))
  on_baseline = envelope.lower_envelope(baseline['C'], baseline['loss'])
  law = power_law_fit.fit('C', baseline['C'][on_baseline], baseline['loss'][on_baseline], fixed)
  on_variant = envelope.lower_envelope(variant['C'], variant['loss'])
  points = _multipliers(law.params, variant['C'][on_variant], variant['loss'][on_variant])
  result = {
      'multiplier': _geometric_mean(points['multiplier']),
      'baseline_frontier': law.params,
      'points': [dict(zip(points, map(float, values))) for values in zip(*points.values())],
      'num_points_beyond_baseline_asymptote': int(np.isnan(points['multiplier']).sum()),
  }
  if num_bootstrap:
    samples = _bootstrap(baseline, variant, law, num_bootstrap, seed)
    result.update(confidence=intervals.CONFIDENCE, num_bootstrap=len(samples),
                  num_bootstrap_failed=num_bootstrap - len(samples),
                  ci={'multiplier': intervals.percentile_interval(samples)})
  return result


def _multipliers(frontier, compute, loss) -> dict:
  baseline_compute = power_law_fit.inverse(frontier, loss)
  return {'C': compute, 'loss': loss, 'baseline_C': baseline_compute,
          'multiplier': baseline_compute / compute}


def _bootstrap(baseline, variant, law, num_resamples, seed) -> list[float]:
  rng = np.random.default_rng(seed)
  baseline_counts = _resample_counts(rng, table_lib.num_rows(baseline), num_resamples)
  variant_counts = _resample_counts(rng, table_lib.num_rows(variant), num_resamples)
  masks = np.array([envelope.resampled_envelope(baseline['C'], baseline['loss'], counts)
                    for counts in baseline_counts])
  thetas = parametric_fit.refit_batch(
      law, np.log(baseline['C'])[:, None], np.log(baseline['loss']), baseline_counts * masks)
  samples = []
  for theta, counts in zip(thetas, variant_counts):
    if not np.all(np.isfinite(theta[:2])):
      continue
    on_variant = envelope.resampled_envelope(variant['C'], variant['loss'], counts)
    points = _multipliers(law.resample_params(theta), variant['C'][on_variant],
                          variant['loss'][on_variant])
    samples.append(_geometric_mean(points['multiplier']))
  return samples


def _resample_counts(rng, n, num_resamples):
  return rng.multinomial(n, np.full(n, 1.0 / n), size=num_resamples)


def _geometric_mean(values) -> float:
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  return float(np.exp(np.mean(np.log(values)))) if values.size else float('nan')


def _checked(runs, name):
  table_lib.require_positive(runs, ('loss',), name)
  if 'C' not in runs:
    table_lib.require_positive(runs, ('N', 'D'), f'{name} (no C column, so C = 6ND)')
  runs = table_lib.with_compute(runs)
  table_lib.require_positive(runs, ('C',), name)
  return runs
