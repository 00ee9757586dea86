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


def summarise(samples: list[dict], names, confidence=CONFIDENCE) -> dict:
  """{'ci': {name: [low, high]}, 'bootstrap': {name: [per-resample values]}, ...} for `names`."""
  names = [name for name in names if any(name in sample for sample in samples)]
  columns = {name: [float(sample.get(name, np.nan)) for sample in samples] for name in names}
  return {
      'confidence': confidence,
      'num_bootstrap': len(samples),
      'ci': {name: percentile_interval(values, confidence) for name, values in columns.items()},
      'bootstrap': columns,
  }
