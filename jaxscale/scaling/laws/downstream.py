"""A downstream metric from the loss, as Gadre et al. 2024 do: the task's error falls
exponentially as the loss falls,

  error(L) = epsilon - k * exp(-gamma * L),

(error = 1 - metric for accuracies, the metric itself otherwise), and through a loss law against
compute, L(C) = E + k_C / C^gamma_C, the error at a compute budget: error(L(C)).
"""

import numpy as np
import scipy.optimize

from jaxscale.scaling.laws import power_law_fit

NAMES = ('epsilon', 'k', 'gamma')


def is_accuracy(target: str) -> bool:
  """Whether higher is better for the metric named last in 'eval/<task>/<metric>'."""
  metric = target.rsplit('/', 1)[-1]
  return metric.startswith(('acc', 'exact_match', 'f1', 'mcc'))


def error(params: dict, loss) -> np.ndarray:
  return params['epsilon'] - params['k'] * np.exp(-params['gamma'] * np.asarray(loss, float))


def fit_error(loss, err) -> dict:
  """epsilon, k, gamma by least squares (scipy's curve_fit) from a few starts, the best kept."""
  loss, err = np.asarray(loss, float), np.asarray(err, float)
  if len(loss) < len(NAMES):
    raise ValueError(f'The downstream law has {len(NAMES)} parameters; fitting it needs at least '
                     f'{len(NAMES)} runs with the target metric, got {len(loss)}.')
  model = lambda x, eps, k, gamma: eps - k * np.exp(-gamma * x)
  best, best_sse = None, np.inf
  for gamma in (0.3, 1.0, 3.0):
    k_start = (err.max() - err.min() + 1e-3) / max(np.exp(-gamma * loss.min()), 1e-12)
    try:
      theta, _ = scipy.optimize.curve_fit(model, loss, err, p0=(err.max(), k_start, gamma),
                                          maxfev=20000)
    except (RuntimeError, ValueError):
      continue  # No convergence from this start.
    sse = float(np.sum((model(loss, *theta) - err) ** 2))
    if np.all(np.isfinite(theta)) and sse < best_sse:
      best, best_sse = theta, sse
  if best is None:
    raise ValueError('The downstream law did not converge from any start; check that the target '
                     'metric varies with the loss.')
  return dict(zip(NAMES, map(float, best)))


def fit(runs, target: str) -> dict:
  """The fit.json record of `target` (a column of the run table) against loss and compute."""
  if target not in runs:
    found = sorted(name for name in runs if name.startswith('eval/'))
    raise ValueError(f'No column {target!r} in the run table; downstream columns there: '
                     f'{", ".join(found) or "none (train with config.lm_eval.tasks)"}.')
  values = runs[target]
  keep = np.isfinite(values) & np.isfinite(runs['loss']) if values.dtype.kind == 'f' else None
  if keep is None or not keep.any():
    raise ValueError(f'Column {target!r} holds no numbers.')
  accuracy = is_accuracy(target)
  loss, err = runs['loss'][keep], (1 - values[keep] if accuracy else values[keep])
  params = fit_error(loss, err)
  record = {'law': 'downstream', 'target': target, 'error': f'1 - {target}' if accuracy
            else target, 'form': 'error = epsilon - k * exp(-gamma * loss)', **params,
            'num_runs': int(keep.sum()),
            'residual_rms': float(np.sqrt(np.mean((error(params, loss) - err) ** 2)))}
  if 'C' in runs and runs['C'].dtype.kind == 'f':
    compute = runs['C'][keep]
    loss_law = power_law_fit.fit('C', compute, loss).params
    record['loss_vs_compute'] = {'form': 'loss = E + k / C^gamma', **loss_law}
    predicted = error(params, power_law_fit.evaluate(loss_law, compute))
    record['through_compute_rms'] = float(np.sqrt(np.mean((predicted - err) ** 2)))
  return record


def predict(record: dict, loss=None, compute=None) -> float:
  """The target metric (not its error) at a loss, or at a compute budget through the loss law."""
  if loss is None:
    loss = power_law_fit.evaluate(record['loss_vs_compute'], np.asarray(compute, float))
  err = error(record, loss)
  return float(1 - err if record['error'].startswith('1 - ') else err)
