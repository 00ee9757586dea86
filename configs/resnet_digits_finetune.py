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

import ml_collections

from jaxscale.config import config_base

MODEL = dict(name='resnet', num_classes=0, image_size=0, depth=18, width=16, stem='cifar')


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 300
  c.batch_size = 64
  c.log_every_steps = 50
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 300
  c.keep_checkpoints = 1
  c.num_eval_batches = 3           # 192 slots for the 149 test images of classes 5-9.

  c.dataset.name = 'digits'
  c.dataset.classes = (5, 6, 7, 8, 9)
  c.dataset.image_size = 8
  c.dataset.shuffle_buffer_size = 2048

  c.init_from.workdir = 'workdirs/resnet_digits_pretrain'
  c.init_from.reinit = ('^head',)  # head.kernel, head.bias: new classes; everything else loads.

  c.model = ml_collections.ConfigDict(MODEL)

  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.01  # A tenth of the pretrain's: keep the features it learned.
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 30
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
