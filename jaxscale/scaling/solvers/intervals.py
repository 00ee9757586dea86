"""Bootstrap percentile intervals, and the resamples fit.json keeps for later predictions."""

import numpy as np

CONFIDENCE = 0.95


def percentile_interval(values, confidence=CONFIDENCE) -> list[float]:
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  if values.size == 0:
    return [float('nan'), float('nan')]
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return [float(low), float(high)]


FAILED_SHARE_NOTE = 0.1  # Above this share of failed refits, the summary warns.


def summarise(samples: list[dict], names, confidence=CONFIDENCE, num_failed=0,
              why_failed='the refit diverged from every start') -> dict:
  """{'ci': {name: [low, high]}, 'bootstrap': {name: [per-resample values]}, ...} for `names`.

  `num_failed` resamples gave no usable refit from any start (they are not in `samples`); the
  summary counts them (`bootstrap_failed`), `ci_basis` says how many resamples the intervals rest
  on, and `bootstrap_note` what that means when many failed."""
  names = [name for name in names if any(name in sample for sample in samples)]
  columns = {name: [float(sample.get(name, np.nan)) for sample in samples] for name in names}
  total = len(samples) + num_failed
  summary = {
      'confidence': confidence,
      'num_bootstrap': len(samples),
      'num_bootstrap_failed': int(num_failed),
      'bootstrap_failed': int(num_failed),
      'ci_basis': f'{confidence:.0%} percentile intervals from {len(samples)} of {total} '
                  f'bootstrap resamples ({int(num_failed)} failed: {why_failed}, dropped)'
                  if num_failed else
                  f'{confidence:.0%} percentile intervals from {len(samples)} bootstrap resamples',
      'ci': {name: percentile_interval(values, confidence) for name, values in columns.items()},
      'bootstrap': columns,
  }
  if num_failed > FAILED_SHARE_NOTE * total:
    summary['bootstrap_note'] = (
        f'{num_failed} of {total} resamples failed ({why_failed}); the intervals come from the '
        'rest and are likely too narrow. More runs make them trustworthy.')
  return summary
