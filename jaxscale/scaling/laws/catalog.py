"""The law forms a backtest compares, each with one interface: applicable? fit, predict.

  chinchilla          Approach 3, L(N, D) = E + A/N^alpha + B/D^beta, E free        (5 params)
  chinchilla_fixed_E  the same with E pinned to the known least loss (the table's
                      dataset_min_loss column, or --fix E=...)                       (4)
  frontier            L*(C) = E + k C^-gamma through Approach 2's per-budget minima  (3)
  power_law           L*(C) = k C^-gamma through the same minima (no offset)         (2)
  kaplan              Kaplan's L(N, D) on non-embedding N (column N_nonembed)       (4)
  data_constrained    Muennighoff et al.'s form, where runs repeat data (column
                      unique_tokens, some D above it)                                (6)

Forms in (N, D) predict every run's loss; frontier forms predict the best loss at a run's compute,
so they are scored only on each budget's best run (`best_of_budget`).
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from jaxscale.scaling.laws import approach2, approach3, curve_fit, power_law_fit
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import parametric_fit


@dataclasses.dataclass(frozen=True)
class LawForm:
  name: str
  num_params: int                 # Fewer wins a near tie (`selection`).
  in_compute_only: bool           # Predicts the best loss at C, not a given (N, D).
  why_not: Callable               # runs, fixed -> None, or why the form does not apply.
  fit: Callable                   # runs, fixed -> params dict.
  loss: Callable                  # params, runs -> predicted loss per run.


def known_min_loss(runs, fixed) -> Optional[float]:
  if 'E' in (fixed or {}):
    return float(fixed['E'])
  column = runs.get('dataset_min_loss')
  if column is not None and column.dtype.kind == 'f' and np.isfinite(column).any():
    return float(np.nanmedian(column))
  return None


def best_of_budget(runs) -> np.ndarray:
  """Mask of each compute budget's lowest-loss run."""
  labels = approach2.budget_labels(runs)
  mask = np.zeros(table_lib.num_rows(runs), bool)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    mask[members[np.argmin(runs['loss'][members])]] = True
  return mask


def _fit_chinchilla(runs, fixed):
  table_lib.require_rows(runs, approach3.MIN_POINTS, 'Approach 3')
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  return parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid(), fixed).params


def _fit_chinchilla_fixed_e(runs, fixed):
  table_lib.require_rows(runs, approach3.MIN_POINTS - 1, 'Approach 3 with E fixed')
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  pinned = {**(fixed or {}), 'E': known_min_loss(runs, fixed)}
  return parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid(), pinned).params


def _frontier_fitter(pin_offset):
  def fit(runs, fixed):
    optima = approach2.minima(runs, approach2.budget_labels(runs))
    pinned = {**(fixed or {}), 'E': 0.0} if pin_offset else fixed
    return power_law_fit.fit('C', optima['C'], optima['loss'], pinned).params
  return fit


def _frontier_loss(params, runs):
  return power_law_fit.evaluate(params, runs['C'])


def _why_not_frontier(runs, fixed):
  if len(np.unique(approach2.budget_labels(runs))) < 3:
    return 'needs 3 or more compute budgets (IsoFLOP curves) for the minima'
  return None


def _why_not_fixed_e(runs, fixed):
  if known_min_loss(runs, fixed) is None:
    return 'needs the least achievable loss (a dataset_min_loss column, or --fix E=...)'
  return None


def _why_not_kaplan(runs, fixed):
  if 'N_nonembed' not in runs or runs['N_nonembed'].dtype.kind != 'f' or not np.all(
      runs['N_nonembed'] > 0):
    return 'needs non-embedding parameter counts (column N_nonembed, as collect writes)'
  return None


def _why_not_data_constrained(runs, fixed):
  if 'unique_tokens' not in runs or runs['unique_tokens'].dtype.kind != 'f':
    return 'needs unique_tokens per run (how many distinct tokens its D repeats)'
  if not np.any(runs['D'] > 1.01 * runs['unique_tokens']):
    return 'no run repeats data (D never exceeds unique_tokens)'
  return None


FORMS = {form.name: form for form in (
    LawForm('chinchilla', 5, False, lambda runs, fixed: None, _fit_chinchilla,
            lambda params, runs: approach3.loss(params, runs['N'], runs['D'])),
    LawForm('chinchilla_fixed_E', 4, False, _why_not_fixed_e, _fit_chinchilla_fixed_e,
            lambda params, runs: approach3.loss(params, runs['N'], runs['D'])),
    LawForm('frontier', 3, True, _why_not_frontier, _frontier_fitter(False), _frontier_loss),
    LawForm('power_law', 2, True, _why_not_frontier, _frontier_fitter(True), _frontier_loss),
    LawForm('kaplan', 4, False, _why_not_kaplan,
            lambda runs, fixed: curve_fit.fit_kaplan(runs['N_nonembed'], runs['D'], runs['loss']),
            lambda params, runs: curve_fit.kaplan_loss(params, runs['N_nonembed'], runs['D'])),
    LawForm('data_constrained', 6, False, _why_not_data_constrained,
            lambda runs, fixed: curve_fit.fit_data_constrained(
                runs['N'], runs['D'], runs['unique_tokens'], runs['loss'], fixed),
            lambda params, runs: curve_fit.data_constrained_loss(
                params, runs['N'], runs['D'], runs['unique_tokens'])),
)}


def get(name) -> LawForm:
  if name not in FORMS:
    raise ValueError(f'Unknown law form {name!r}; choose one of: {", ".join(FORMS)}.')
  return FORMS[name]
