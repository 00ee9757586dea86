"""A small MLP on 5% of the digits' labels, distilled from a bigger MLP trained on all of them.

  python -m jaxscale.main --config configs/mlp_digits.py --workdir workdirs/mlp_digits
  python -m jaxscale.main --config configs/mlp_digits_distill.py --workdir workdirs/mlp_distilled

The first command trains the teacher (hidden (256, 256), every label). The student (hidden (32,))
sees 75 labelled images; the teacher's soft labels on them (temperature 4, alpha 0.9) carry what
its hard labels lack. The same student alone, for comparison:
`--config.distill.teacher_workdir= --workdir workdirs/mlp_alone`.
"""

import ml_collections

from jaxscale import config_base


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 300
  c.batch_size = 64
  c.log_every_steps = 50
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 300
  c.num_eval_batches = 5           # 320 slots for the 300 test images (the rest weigh 0).

  c.dataset.name = 'digits'
  c.dataset.image_size = 8
  c.dataset.shuffle_buffer_size = 2048
  c.dataset.train_fraction = 0.05  # 75 labelled images, stratified.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.num_classes = 0          # 0: from the dataset.
  c.model.image_size = 0           # 0: config.dataset.image_size.
  c.model.hidden_dims = (32,)
  c.model.activation = 'relu'

  c.distill.teacher_workdir = 'workdirs/mlp_digits'
  c.distill.temperature = 4.0
  c.distill.alpha = 0.9

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b2 = 0.999
  return c
