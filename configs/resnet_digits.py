"""A small ResNet-18 (CIFAR stem, 16 base channels) on scikit-learn's digits, offline, CPU minutes.

  python -m jaxscale.main --config configs/resnet_digits.py --workdir workdirs/resnet_digits

The 8x8 digits are upsampled to 16x16 and trained with SGD + Nesterov momentum, the ResNet recipe
of the CIFAR config at a toy scale. `--config.model.width` scales every stage's channels.
"""

import ml_collections

from jaxscale.config import config_base


def get_config():
  c = config_base.get_base_config()
  c.num_train_steps = 300
  c.batch_size = 64
  c.log_every_steps = 50
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 150
  c.num_eval_batches = 5           # 320 slots for the 300 test images (the rest weigh 0).

  c.dataset.name = 'digits'
  c.dataset.image_size = 16
  c.dataset.shuffle_buffer_size = 2048
  c.dataset.crop = 'pad_and_crop'
  c.dataset.crop_padding = 2

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet'
  c.model.num_classes = 0
  c.model.image_size = 0
  c.model.depth = 18
  c.model.width = 16
  c.model.stem = 'cifar'

  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 20
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.grad_clip_norm = 0.0
  return c
