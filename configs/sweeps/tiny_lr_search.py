"""A learning-rate and weight-decay search for one tiny model of the markov IsoFLOP sweep
(2 layers, d_model 32): Optuna's TPE sampler, the median pruner on eval rows, ~4 minutes on 2 CPU
cores.

  python -m jaxscale.hparams search configs/sweeps/tiny_lr_search.py --dir sweeps/lr_search
  python -m jaxscale.hparams best sweeps/lr_search
"""

import pathlib

import ml_collections

from jaxscale.config import config_base


def get_config():
  sweep = config_base.load_config_file(pathlib.Path(__file__).with_name('tiny_isoflop.py'))
  c = ml_collections.ConfigDict()
  c.base_config = sweep.base_config     # Run config every trial starts from (repo-relative).
  # Trainer --config.key=value overrides for every trial: the IsoFLOP sweep's markov data, batch
  # and eval batches, then one model and its schedule.
  c.overrides = sweep.overrides[:4] + (
      'model.num_layers=2', 'model.d_model=32', 'model.num_heads=4', 'model.mlp_dim=128',
      'num_train_steps=200', 'optimizer.warmup_steps=10', 'optimizer.schedule=cosine',
      # Eval rows the pruner reads as they are written.
      'eval_every_steps=40', 'log_every_steps=40', 'checkpoint_every_steps=40',
      'async_checkpointing=False')

  c.search = ml_collections.ConfigDict()
  c.search.method = 'tpe'                # 'grid' | 'random' | 'tpe' (Bayesian, Optuna's TPE)
  c.search.params = (                    # (config key, kind, range or choices); see space.py.
      ('optimizer.learning_rate', 'log', 1e-3, 1e-1),
      ('optimizer.weight_decay', 'float', 0.0, 0.2),
  )
  c.search.grid_points = 4               # 'grid' only: values per range.
  c.search.num_trials = 8                # Trials to finish (complete, pruned or failed).
  c.search.objective = 'eval_loss'       # summary.json / eval-row key to optimise...
  c.search.direction = 'minimize'        # ...'minimize' | 'maximize'.
  c.search.pruner = 'median'             # 'none' | 'median' | 'successive_halving'
  c.search.pruner_startup_trials = 3     # Median pruner: trials run in full before pruning...
  c.search.pruner_warmup_steps = 40      # ...and steps of each trial before it may be pruned.
  c.search.seed = 0                      # The sampler's seed.
  return c
