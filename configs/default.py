"""Default: a byte-level LM on the Python standard library's source, ~5 minutes on 2 CPU cores.

  python -m jaxscale.main --config configs/default.py --workdir workdirs/default
"""

from jaxscale.config import config_base


def get_config():
  c = config_base.get_base_config()
  c.update(num_train_steps=500, batch_size=16, log_every_steps=50, eval_every_steps=125,
           checkpoint_every_steps=250, num_eval_batches=8)

  c.dataset.update(name='python_stdlib', seq_len=256)

  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.mlp_activation = 'gelu'

  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  return c
