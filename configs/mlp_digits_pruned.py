"""The MLP of configs/mlp_digits.py pruned to 90% sparsity while it trains.

  python -m jaxscale.main --config configs/mlp_digits_pruned.py --workdir workdirs/mlp_pruned

Magnitude pruning per layer, on the gradual schedule of Zhu & Gupta (2017): from step 100 to
step 400, masks recomputed every 50 steps, then 200 steps of training with the masks fixed. The
biases are never pruned. Metrics rows log `sparsity` and `sparsity/<layer>`; the saved
parameters hold the zeros. Other targets: `--config.pruning.sparsity=0.5` or `0.8`; 2:4
structured sparsity: `--config.pruning.method=nm --config.pruning.sparsity=0.5`.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('mlp_digits.py'))
  c.pruning.sparsity = 0.9
  c.pruning.start_step = 100
  c.pruning.end_step = 400
  c.pruning.update_every = 50
  return c
