"""Finetune the ViT of configs/vit_digits_pretrain.py on the digits it never saw (classes 5-9).

  python -m jaxscale.main --config configs/vit_digits_pretrain.py --workdir workdirs/vit_digits_pretrain
  python -m jaxscale.main --config configs/vit_digits_finetune.py --workdir workdirs/vit_digits_finetune

The pretrain run's classes 0-4 are relabelled 0..4 and this run's 5-9 are too, so the heads have
the same shape, but this one means other digits: it is initialised fresh on purpose (reinit) and
every other parameter loads (`init_report.json`). Train from scratch for comparison with
`--config.init_from.workdir=''`; few labels with `--config.dataset.train_fraction=0.1`; a frozen
backbone with `--config.optimizer.frozen="('^(?!head)',)"`. benchmarks/transfer.py compares them.
"""

import pathlib

from jaxscale.config import config_base

HERE = pathlib.Path(__file__).parent


def get_config():
  # The data, schedule and new head of configs/resnet_digits_finetune.py; the ViT and AdamW of
  # configs/vit_digits_pretrain.py.
  c = config_base.load_config_file(HERE / 'resnet_digits_finetune.py')
  pretrain = config_base.load_config_file(HERE / 'vit_digits_pretrain.py')
  c.init_from.workdir = 'workdirs/vit_digits_pretrain'
  c.init_from.reinit = ('^head',)  # head_DxK, head_bias_K: new classes; everything else loads.
  c.model = pretrain.model
  c.optimizer = pretrain.optimizer
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 30
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
