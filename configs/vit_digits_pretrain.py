"""A small ViT pretrained on half of scikit-learn's digits (classes 0-4), offline, ~1 CPU minute.

  python -m jaxscale.main --config configs/vit_digits_pretrain.py --workdir workdirs/vit_digits_pretrain

The representation it learns is then finetuned on the other five digits, labels it never saw
(configs/vit_digits_finetune.py): a transfer between tasks, not more training on the same one.
8x8 images in 2x2 patches: 16 patch tokens and a class token, width 64, 4 blocks.
"""

import ml_collections

from jaxscale.config import config_base

MODEL = dict(name='vit', num_classes=0, image_size=0, patch_size=2, width=64, depth=4,
             num_heads=4, mlp_dim=128, pooling='cls')


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 600
  c.batch_size = 64
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 600
  c.keep_checkpoints = 1
  c.num_eval_batches = 3           # 192 slots for the 151 test images of classes 0-4.

  c.dataset.name = 'digits'
  c.dataset.classes = (0, 1, 2, 3, 4)
  c.dataset.image_size = 8
  c.dataset.shuffle_buffer_size = 2048
  c.dataset.crop = 'pad_and_crop'  # 1-pixel shifts: a more general representation to transfer.
  c.dataset.crop_padding = 1

  c.model = ml_collections.ConfigDict(MODEL)

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.05
  c.optimizer.b2 = 0.999
  c.optimizer.min_lr_ratio = 0.0
  return c
