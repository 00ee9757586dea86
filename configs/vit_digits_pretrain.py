"""A small ViT pretrained on half of scikit-learn's digits (classes 0-4), offline, ~1 CPU minute.

  python -m jaxscale.main --config configs/vit_digits_pretrain.py --workdir workdirs/vit_digits_pretrain

The representation it learns is then finetuned on the other five digits, labels it never saw
(configs/vit_digits_finetune.py): a transfer between tasks, not more training on the same one.
8x8 images in 2x2 patches: 16 patch tokens and a class token, width 64, 4 blocks.
"""

import pathlib

import ml_collections

from jaxscale.config import config_base

MODEL = dict(name='vit', num_classes=0, image_size=0, patch_size=2, width=64, depth=4,
             num_heads=4, mlp_dim=128, pooling='cls')


def get_config():
  # The data and schedule of configs/resnet_digits_pretrain.py; a ViT trained by AdamW.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet_digits_pretrain.py'))
  c.model = ml_collections.ConfigDict(MODEL)

  c.optimizer = config_base.get_base_config().optimizer
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.05
  c.optimizer.b2 = 0.999
  c.optimizer.min_lr_ratio = 0.0
  return c
