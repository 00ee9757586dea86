"""Kaplan et al. 2020's three power laws: L(N), L(D) and L(C), each E + k / X^gamma.

L(N) is fitted to each model size's best loss (its longest or best-tuned run, standing in for
"trained to convergence"), L(D) to each token count's best loss over model sizes, and L(C) to the
lower envelope of loss against compute. Kaplan's laws have no offset; `offset=False` pins E = 0.
Each law gets its own bootstrap over the points it was fitted to.
"""

import numpy as np

from jaxscale.scaling.laws import envelope, power_law_fit
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import parametric_fit

TOKEN_TOLERANCE = 0.05  # Token counts within 5% are one D (runs stop at whole steps).


def fit(runs, fixed=None, offset=True, num_bootstrap=1000, seed=0) -> dict:
  runs = table_lib.checked_runs(runs)
  fixed = dict(fixed or {})
  if not offset:
    fixed['E'] = 0.0
  selections = {
      'N': envelope.group_minimum(runs['N'], runs['loss']),
      'D': envelope.group_minimum(envelope.bin_relative(runs['D'], TOKEN_TOLERANCE), runs['loss']),
      'C': envelope.lower_envelope(runs['C'], runs['loss']),
  }
  record = {'law': 'kaplan', 'offset': offset, 'fixed': fixed,
            'num_points': table_lib.num_rows(runs)}
  for variable, mask in selections.items():
    x, loss = runs[variable][mask], runs['loss'][mask]
    fitted = power_law_fit.fit(variable, x, loss, fixed)
    thetas = None
    if num_bootstrap:
      thetas = parametric_fit.bootstrap(
          fitted, np.log(x)[:, None], np.log(loss), num_bootstrap, seed)
    record[f'L({variable})'] = {**power_law_fit.record(fitted, thetas),
                                'num_points': int(mask.sum())}
  return record
