"""PNG figures of a fit against its runs: IsoFLOP curves, the compute frontier, the law against
the data, and residuals. Uses matplotlib's Agg backend, so it runs without a display."""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from jaxscale.scaling.laws import allocation, approach2, approach3, envelope, power_law_fit
from jaxscale.scaling.runs import table as table_lib


def plot_all(runs, record, out_dir) -> list[str]:
  """Writes isoflop.png, frontier.png, law.png and residuals.png; returns their paths."""
  runs = table_lib.checked_runs(runs)
  os.makedirs(out_dir, exist_ok=True)
  figures = {'isoflop': isoflop_curves, 'frontier': loss_vs_compute, 'law': law_against_data,
             'residuals': residuals}
  paths = []
  for name, draw in figures.items():
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    draw(axes, runs, record)
    figure.tight_layout()
    paths.append(os.path.join(out_dir, f'{name}.png'))
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
  return paths


def frontier_loss(record, compute):
  """The fit's best achievable loss at each compute, or None if the fit has no such curve."""
  if record['law'] == 'kaplan':
    return power_law_fit.evaluate(record['L(C)'], compute)
  if record['approach'] == 3:
    n_opt, d_opt = approach3.compute_optimal(record, compute, record['flops_per_param_token'])
    return approach3.loss(record, n_opt, d_opt)
  return power_law_fit.evaluate(record['frontier'], compute) if record.get('frontier') else None


def isoflop_curves(axes, runs, record):
  labels = approach2.budget_labels(runs)
  colors = plt.cm.viridis(np.linspace(0, 0.9, labels.max() + 1))
  for label, color in zip(range(labels.max() + 1), colors):
    members = labels == label
    n, d, loss = runs['N'][members], runs['D'][members], runs['loss'][members]
    order = np.argsort(n)
    compute = np.exp(np.mean(np.log(runs['C'][members])))
    axes.plot(n[order], loss[order], 'o', color=color, ms=4, label=f'C={compute:.2g}')
    try:
      log_n_opt, _, loss_min = approach2.budget_minimum(np.log(n), np.log(d), loss, label)
    except approach2.NoInteriorMinimum:
      continue
    grid = np.linspace(np.log(n).min(), np.log(n).max(), 50)
    parabola = np.polyfit(np.log(n), loss, 2)
    axes.plot(np.exp(grid), np.polyval(parabola, grid), '-', color=color, lw=1)
    axes.plot(np.exp(log_n_opt), loss_min, '*', color=color, ms=12, mec='k')
  axes.set(xscale='log', xlabel='parameters N', ylabel='loss',
           title='IsoFLOP curves (parabola fits, minima starred)')
  if labels.max() < 12:
    axes.legend(fontsize=7)


def loss_vs_compute(axes, runs, record):
  points = axes.scatter(runs['C'], runs['loss'], c=np.log10(runs['N']), s=10, cmap='viridis')
  plt.colorbar(points, ax=axes, label='log10 N')
  on_envelope = envelope.lower_envelope(runs['C'], runs['loss'])
  order = np.argsort(runs['C'][on_envelope])
  axes.plot(runs['C'][on_envelope][order], runs['loss'][on_envelope][order], 'k--', lw=1,
            label='lower envelope')
  grid = np.geomspace(runs['C'].min(), runs['C'].max() * 10, 100)
  fitted = frontier_loss(record, grid)
  if fitted is not None:
    axes.plot(grid, fitted, 'r-', label='fitted frontier')
  axes.set(xscale='log', xlabel='training FLOPs C', ylabel='loss', title='Loss vs compute')
  axes.legend(fontsize=8)


def law_against_data(axes, runs, record):
  if record['law'] == 'chinchilla' and record['approach'] == 3:
    predicted = approach3.loss(record, runs['N'], runs['D'])
    axes.scatter(runs['loss'], predicted, s=8)
    limits = [min(runs['loss'].min(), predicted.min()), max(runs['loss'].max(), predicted.max())]
    axes.plot(limits, limits, 'k--', lw=1)
    axes.set(xlabel='observed loss', ylabel='fitted L(N, D)', title='Fitted law against data')
    return
  if record['law'] == 'kaplan':
    for variable, marker in (('N', 'o'), ('D', 's')):
      law = record[f'L({variable})']
      x = np.geomspace(runs[variable].min(), runs[variable].max(), 50)
      axes.plot(x, power_law_fit.evaluate(law, x), '-', label=f'L({variable})')
      axes.plot(runs[variable], runs['loss'], marker, ms=3, alpha=0.4)
    axes.set(xscale='log', xlabel='N or D', ylabel='loss', title='Kaplan laws against data')
    axes.legend(fontsize=8)
    return
  optima = record.get('minima') or record.get('envelope')
  compute = np.array([point['C'] for point in optima])
  grid = np.geomspace(compute.min(), compute.max() * 10, 50)
  n_opt, d_opt = allocation.optimal_sizes(record, grid)
  axes.plot(compute, [point['N'] for point in optima], 'o', label='N_opt (data)')
  axes.plot(grid, n_opt, '-', label=f'N_opt ~ C^{record["a"]:.3f}')
  axes.plot(compute, [point['D'] for point in optima], 's', label='D_opt (data)')
  axes.plot(grid, d_opt, '-', label=f'D_opt ~ C^{record["b"]:.3f}')
  axes.set(xscale='log', yscale='log', xlabel='training FLOPs C', ylabel='N or D',
           title='Compute-optimal allocation')
  axes.legend(fontsize=8)


def residuals(axes, runs, record):
  if record['law'] == 'chinchilla' and record['approach'] == 3:
    predicted = approach3.loss(record, runs['N'], runs['D'])
    compute, observed, title = runs['C'], runs['loss'], 'log residuals of L(N, D)'
  else:
    on_envelope = envelope.lower_envelope(runs['C'], runs['loss'])
    compute, observed = runs['C'][on_envelope], runs['loss'][on_envelope]
    predicted = frontier_loss(record, compute)
    title = 'log residuals of the frontier on the envelope'
    if predicted is None:
      axes.set(title='no loss frontier in this fit')
      return
  axes.axhline(0, color='k', lw=1)
  axes.scatter(compute, np.log(observed) - np.log(predicted), s=8)
  axes.set(xscale='log', xlabel='training FLOPs C', ylabel='log observed - log fitted', title=title)
