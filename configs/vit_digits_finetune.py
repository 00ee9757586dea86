"""Finetune the ViT of configs/vit_digits_pretrain.py on the digits it never saw (classes 5-9).

  python -m jaxscale.main --config configs/vit_digits_pretrain.py --workdir workdirs/vit_digits_pretrain
  python -m jaxscale.main --config configs/vit_digits_finetune.py --workdir workdirs/vit_digits_finetune

The pretrain run's classes 0-4 are relabelled 0..4 and this run's 5-9 are too, so the heads have
the same shape, but this one means other digits: it is initialised fresh on purpose (reinit) and
every other parameter loads (`init_report.json`). Train from scratch for comparison with
`--config.init_from.workdir=''`; few labels with `--config.dataset.train_fraction=0.1`; a frozen
backbone with `--config.optimizer.frozen="('^(?!head)',)"`. benchmarks/transfer.py compares them.
"""

import ml_collections

from jaxscale.config import config_base

MODEL = dict(name='vit', num_classes=0, image_size=0, patch_size=2, width=64, depth=4,
             num_heads=4, mlp_dim=128, pooling='cls')


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

  c.init_from.workdir = 'workdirs/vit_digits_pretrain'
  c.init_from.reinit = ('^head',)  # head_DxK, head_bias_K: new classes; everything else loads.

  c.model = ml_collections.ConfigDict(MODEL)

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 0.05
  c.optimizer.b2 = 0.999
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
