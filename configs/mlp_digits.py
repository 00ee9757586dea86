"""An MLP on scikit-learn's digits (embedded, offline): about a minute on 2 CPU cores.

  python -m jaxscale.main --config configs/mlp_digits.py --workdir workdirs/mlp_digits

1,497 training images of 8x8 digits (149 of them held out as the validation split it evaluates
on) and 300 test images, kept at their native 8x8 resolution. A
width-scaling sweep only needs `--config.model.hidden_dims`; a data-scaling sweep `num_train_steps`.
"""

import ml_collections

from jaxscale.config import config_base


def get_config():
  c = config_base.get_base_config()
  # 5 eval batches: 320 slots, for the 149 validation images or (--config.dataset.eval_split=test)
  # the 300 test images; the rest weigh 0.
  c.update(num_train_steps=600, batch_size=64, log_every_steps=50, eval_every_steps=200,
           checkpoint_every_steps=300, num_eval_batches=5)

  c.dataset.update(name='digits', image_size=8, shuffle_buffer_size=2048)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.num_classes = 0          # 0: from the dataset.
  c.model.image_size = 0           # 0: config.dataset.image_size.
  c.model.hidden_dims = (256, 256)
  c.model.activation = 'relu'

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b2 = 0.999
  c.label_smoothing = 0.0
  return c
