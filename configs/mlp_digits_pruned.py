"""The MLP of configs/mlp_digits.py pruned to 90% sparsity while it trains.

  python -m jaxscale.main --config configs/mlp_digits_pruned.py --workdir workdirs/mlp_pruned

Magnitude pruning per layer, on the gradual schedule of Zhu & Gupta (2017): from step 100 to
step 400, masks recomputed every 50 steps, then 200 steps of training with the masks fixed. The
biases are never pruned. Metrics rows log `sparsity` and `sparsity/<layer>`; the saved
parameters hold the zeros. Other targets: `--config.pruning.sparsity=0.5` or `0.8`; 2:4
structured sparsity: `--config.pruning.method=nm --config.pruning.sparsity=0.5`.
"""

import ml_collections

from jaxscale import config_base


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 600
  c.batch_size = 64
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 300
  c.num_eval_batches = 5           # 320 slots for the 300 test images (the rest weigh 0).

  c.dataset.name = 'digits'
  c.dataset.image_size = 8
  c.dataset.shuffle_buffer_size = 2048

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.num_classes = 0          # 0: from the dataset.
  c.model.image_size = 0           # 0: config.dataset.image_size.
  c.model.hidden_dims = (256, 256)
  c.model.activation = 'relu'

  c.pruning.sparsity = 0.9
  c.pruning.start_step = 100
  c.pruning.end_step = 400
  c.pruning.update_every = 50

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b2 = 0.999
  return c
