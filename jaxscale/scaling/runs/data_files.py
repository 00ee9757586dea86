"""Run tables shipped with the package (see jaxscale/scaling/data/README.md)."""

import importlib.resources

import numpy as np

from jaxscale.scaling.runs import table as table_lib


def chinchilla_fig4(drop_highest_loss: int = 0) -> table_lib.Table:
  """Hoffmann et al. 2022 Fig. 4 runs as extracted by Besiroglu et al. 2024 (N, D, C, loss).

  Their refit drops the 5 highest-loss runs: `chinchilla_fig4(drop_highest_loss=5)`.
  """
  path = importlib.resources.files('jaxscale.scaling') / 'data' / 'chinchilla_fig4.csv'
  with importlib.resources.as_file(path) as csv_path:
    runs = table_lib.read_csv(csv_path)
  by_loss = np.argsort(runs['loss'], kind='stable')
  keep = np.sort(by_loss[:table_lib.num_rows(runs) - drop_highest_loss])
  return table_lib.subset(runs, keep)
