"""A tiny IsoFLOP sweep on the known-entropy `markov` dataset: 3 budgets x 4 sizes, ~15 minutes on
2 CPU cores. Its fitted E can be checked against the dataset's exact least loss (summary.json's
dataset_min_loss, 1.12 nats at seq_len 64).

  python -m jaxscale.scaling sweep --config configs/sweeps/tiny_isoflop.py --out sweeps/tiny
  python -m jaxscale.scaling run sweeps/tiny --parallel 2
  python -m jaxscale.scaling collect sweeps/tiny --out sweeps/tiny/runs.csv
  python -m jaxscale.scaling fit --csv sweeps/tiny/runs.csv --approach 2 --out sweeps/tiny/fit.json
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base_config = 'configs/default.py'  # Run config every run starts from (repo-relative).
  c.overrides = (                        # Trainer --config.key=value overrides for every run.
      'dataset.name=markov',
      'dataset.seq_len=64',
      'batch_size=16',
      'num_eval_batches=8',
      'optimizer.learning_rate=0.01',
      'optimizer.schedule=cosine',
      'async_checkpointing=False',       # Runs this short finish before an async save would.
  )
  c.vocab_size = 32                      # markov's default builder config (32 tokens).

  c.kind = 'isoflop'                     # 'isoflop' | 'grid'
  # Training FLOPs per run, one IsoFLOP curve each. Below ~1e11 these runs are too few steps
  # for the optimum to be interior: the smallest model, with the most steps, wins.
  c.budgets = (1e11, 3e11, 1e12)
  c.sizes_per_budget = 4                 # Model sizes per curve...
  c.size_span = 3.0                      # ...from N*/3 to 3 N*, around the guess N* below.
  c.tokens_per_param = 20.0              # N* from C = 6 N D with D = 20 N (Hoffmann et al.).
  c.model_sizes = ()                     # 'grid' only: target sizes...
  c.tokens = ()                          # ...times these token counts.
  c.size_count = 'total'                 # Targets count 'total' or 'non_embedding' parameters.

  c.shape = ml_collections.ConfigDict()  # shapes.ShapeRule: how a target size becomes a model.
  c.shape.aspect_ratio = 16.0            # d_model ~ 16 * num_layers.
  c.shape.head_dim = 8
  c.shape.mlp_ratio = 4
  c.shape.max_layers = 8

  c.warmup_fraction = 0.05               # Warmup steps as a fraction of each run.
  c.evals_per_run = 4                    # Eval points per run (for collect --all-points).

  c.cooldown = ml_collections.ConfigDict()
  c.cooldown.enabled = False             # WSD trunk + branched cooldowns per shape (cooldown.py).
  c.cooldown.checkpoint_every_steps = 50

  c.vary = ()                            # (config key, values) pairs: each run per combination,
                                         # e.g. (('optimizer.learning_rate', (3e-3, 1e-2)),).
  c.multi = True                         # Runs differing only in learning rate, weight decay,
  c.max_models_per_program = 16          # seed or init scale train in one program (up to 16).
  return c
