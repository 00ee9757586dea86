"""Default: a byte-level LM on the Python standard library's source, ~5 minutes on 2 CPU cores.

  python -m jaxscale.main --config configs/default.py --workdir workdirs/default
"""

from jaxscale.config import config_base


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 500
  c.batch_size = 16
  c.log_every_steps = 50
  c.eval_every_steps = 125
  c.checkpoint_every_steps = 250
  c.num_eval_batches = 8

  c.dataset.name = 'python_stdlib'
  c.dataset.seq_len = 256

  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.mlp_activation = 'gelu'

  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  return c
