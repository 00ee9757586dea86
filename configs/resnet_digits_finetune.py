"""Finetune the ResNet of configs/resnet_digits_pretrain.py on the digits it never saw (5-9).

  python -m jaxscale.main --config configs/resnet_digits_pretrain.py --workdir workdirs/resnet_digits_pretrain
  python -m jaxscale.main --config configs/resnet_digits_finetune.py --workdir workdirs/resnet_digits_finetune

The pretrain run's classes 0-4 and this run's 5-9 are both relabelled 0..4, so the heads have the
same shape, but this one means other digits: it is initialised fresh on purpose (reinit '^head':
head.kernel, head.bias) and every other parameter loads (`init_report.json`); batch-norm running
statistics start fresh and follow the new data. From scratch for comparison: `--config.init_from.workdir=''`; few labels:
`--config.dataset.train_fraction=0.01`; a frozen backbone:
`--config.optimizer.frozen="('^(?!head)',)"`. benchmarks/transfer.py compares them.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet_digits_pretrain.py'))
  c.num_train_steps = 300
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 300   # num_eval_batches 3: 192 slots for the images of 5-9.

  c.dataset.classes = (5, 6, 7, 8, 9)
  c.dataset.crop = 'none'          # No augmentation.
  c.dataset.crop_padding = config_base.get_base_config().dataset.crop_padding

  c.init_from.workdir = 'workdirs/resnet_digits_pretrain'
  c.init_from.reinit = ('^head',)  # head.kernel, head.bias: new classes; everything else loads.

  c.optimizer.learning_rate = 0.01  # A tenth of the pretrain's: keep the features it learned.
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
