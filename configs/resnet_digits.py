"""A small ResNet-18 (CIFAR stem, 16 base channels) on scikit-learn's digits, offline, CPU minutes.

  python -m jaxscale.main --config configs/resnet_digits.py --workdir workdirs/resnet_digits

The 8x8 digits are upsampled to 16x16 and trained with SGD + Nesterov momentum, the ResNet recipe
of the CIFAR config at a toy scale. `--config.model.width` scales every stage's channels.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet18_cifar10.py'))
  # 5 eval batches: 320 slots, for the 149 validation images or (--config.dataset.eval_split=test)
  # the 300 test images; the rest weigh 0.
  c.update(num_train_steps=300, batch_size=64, log_every_steps=50, eval_every_steps=100,
           checkpoint_every_steps=150, num_eval_batches=5)

  c.dataset.update(name='digits', image_size=16, shuffle_buffer_size=2048, crop_padding=2,
                   flip=False)

  c.model.width = 16
  del c.model.dtype                # float32 compute.

  c.optimizer.warmup_steps = 20
  return c
