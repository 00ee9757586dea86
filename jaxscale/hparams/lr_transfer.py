"""Learning-rate transfer across width, from a width x learning-rate sweep's losses: the optimal
learning rate per width and how far it moves per doubling of width (0 when it transfers, as μP
promises; negative under SP, where wider models want smaller rates).

Rows are dicts with 'parametrization', 'width', 'learning_rate' and 'loss' (NaN or inf for a run
that diverged). The plot shows loss against learning rate, a curve per width, a panel per
parametrisation.
"""

import math

import numpy as np


def optimal_log2_lr(learning_rates, losses) -> tuple[float, bool]:
  """(log2 of the loss-minimising learning rate, whether it lies at the edge of the grid).

  The minimum is refined with a parabola in log2(lr) through the best grid point and its two
  neighbours; at the edge of the grid (or when the three points do not curve up) the grid point
  itself, flagged, since the true optimum may lie outside.
  """
  log2_lr = np.log2(np.asarray(learning_rates, np.float64))
  losses = np.asarray(losses, np.float64)
  order = np.argsort(log2_lr)
  log2_lr, losses = log2_lr[order], np.where(np.isfinite(losses[order]), losses[order], np.inf)
  if not np.isfinite(losses).any():
    raise ValueError('Every run diverged: there is no optimal learning rate.')
  best = int(np.argmin(losses))
  if best in (0, len(losses) - 1) or not np.isfinite(losses[best - 1:best + 2]).all():
    return float(log2_lr[best]), best in (0, len(losses) - 1)
  a, b, _ = np.polyfit(log2_lr[best - 1:best + 2], losses[best - 1:best + 2], 2)
  if a <= 0:
    return float(log2_lr[best]), False
  return float(np.clip(-b / (2 * a), log2_lr[best - 1], log2_lr[best + 1])), False


def transfer_summary(rows) -> dict:
  """Per parametrisation: the optimum per width, the least-squares slope of log2(optimal lr)
  against log2(width) (the drift per doubling of width) and the per-pair drifts."""
  summary = {}
  for parametrization in sorted({r['parametrization'] for r in rows}):
    mine = [r for r in rows if r['parametrization'] == parametrization]
    widths = sorted({r['width'] for r in mine})
    optima, at_edge = {}, []
    for width in widths:
      points = sorted((r['learning_rate'], r['loss']) for r in mine if r['width'] == width)
      optima[width], edge = optimal_log2_lr(*zip(*points))
      if edge:
        at_edge.append(width)
    log2_widths = np.log2(widths)
    values = np.array([optima[w] for w in widths])
    slope = float(np.polyfit(log2_widths, values, 1)[0]) if len(widths) > 1 else math.nan
    summary[parametrization] = {
        'optimal_log2_lr': {str(w): round(optima[w], 3) for w in widths},
        'optimal_lr': {str(w): float(2 ** optima[w]) for w in widths},
        'drift_per_doubling': round(slope, 3),
        'drift_per_doubling_pairs': [round(float(d), 3) for d in
                                     np.diff(values) / np.diff(log2_widths)],
        'optimum_at_grid_edge': at_edge,
    }
  return summary


def plot(rows, summary: dict, path) -> None:
  """Loss against learning rate (log2 axis), a curve per width, a panel per parametrisation;
  the refined optimum of each curve marked."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  parametrizations = sorted(summary, key=lambda p: (p != 'sp', p))  # SP first.
  widths = sorted({r['width'] for r in rows})
  colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.85, len(widths)))))
  finite = [r['loss'] for r in rows if math.isfinite(r['loss'])]
  fig, axes = plt.subplots(1, len(parametrizations), figsize=(4.5 * len(parametrizations), 3.6),
                           sharey=True, squeeze=False)
  for ax, parametrization in zip(axes[0], parametrizations):
    for width in widths:
      points = sorted((r['learning_rate'], r['loss']) for r in rows
                      if r['parametrization'] == parametrization and r['width'] == width)
      if not points:
        continue
      lrs, losses = zip(*points)
      ax.plot(lrs, losses, 'o-', color=colors[width], label=f'width {width}')
      ax.axvline(summary[parametrization]['optimal_lr'][str(width)], color=colors[width],
                 linestyle=':', linewidth=1)
    drift = summary[parametrization]['drift_per_doubling']
    ax.set_xscale('log', base=2)
    ax.set(xlabel='learning rate',
           title=f'{parametrization}: optimum {drift:+.2f} log2 per width doubling')
  axes[0][0].set_ylabel('final eval loss')
  if finite:  # Diverged runs are left out; the worst tenth is cut so the minima stay readable.
    low, high = min(finite), float(np.percentile(finite, 90))
    axes[0][0].set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-3)
  axes[0][-1].legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
