"""Learning-rate transfer across width: SP and μP transformers on the known-entropy `markov`
source, every width with every learning rate. Under μP the best learning rate stays put as the
model widens; under SP it drifts down.

  python benchmarks/lr_transfer.py --spec configs/sweeps/lr_transfer.py --out sweeps/lr_transfer

prints one JSON line per run, then per parametrisation the optimum per width and its drift per
doubling of width, and writes the loss-vs-LR plot (sweeps/lr_transfer/lr_transfer.png).
"""

import pathlib

import ml_collections

from jaxscale.config import config_base


def get_config():
  sweep = config_base.load_config_file(pathlib.Path(__file__).with_name('tiny_isoflop.py'))
  c = ml_collections.ConfigDict()
  c.base_config = sweep.base_config     # Run config every run starts from (repo-relative).
  # Trainer --config.key=value overrides for every run: the markov data and batch of
  # configs/sweeps/tiny_isoflop.py, then the schedule.
  c.overrides = sweep.overrides[:3] + (
      'num_train_steps=300', 'optimizer.warmup_steps=30', 'optimizer.schedule=cosine',
      'model.num_layers=2', 'model.num_heads=4',
      'eval_every_steps=300', 'log_every_steps=100', 'num_eval_batches=4',
      'checkpoint_every_steps=300', 'keep_checkpoints=1', 'async_checkpointing=False')
  c.widths = (32, 64, 128)               # d_model of each model (heads keep their number).
  c.mlp_ratio = 4                        # mlp_dim = mlp_ratio * d_model.
  c.learning_rates = (2 ** -9, 2 ** -8, 2 ** -7, 2 ** -6, 2 ** -5, 2 ** -4)  # Factors of 2.
  c.parametrizations = ('sp', 'mup')
  c.mup_base_width = 32                  # μP's base: where μP and SP share their init and LR.
  return c
