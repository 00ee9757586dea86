"""A small MLP on 5% of the digits' labels, distilled from a bigger MLP trained on all of them.

  python -m jaxscale.main --config configs/mlp_digits.py --workdir workdirs/mlp_digits
  python -m jaxscale.main --config configs/mlp_digits_distill.py --workdir workdirs/mlp_distilled

The first command trains the teacher (hidden (256, 256), every label). The student (hidden (32,))
sees 75 labelled images; the teacher's soft labels on them (temperature 4, alpha 0.9) carry what
its hard labels lack. The same student alone, for comparison:
`--config.distill.teacher_workdir= --workdir workdirs/mlp_alone`.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('mlp_digits.py'))
  c.num_train_steps = 300
  c.eval_every_steps = 100
  c.dataset.train_fraction = 0.05  # 75 labelled images, stratified.
  c.model.hidden_dims = (32,)
  c.distill.teacher_workdir = 'workdirs/mlp_digits'
  c.distill.temperature = 4.0
  c.distill.alpha = 0.9
  return c
