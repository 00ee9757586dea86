"""ViT-S/16 on CIFAR-10 from scratch at 224x224 (CIFAR upsampled), DeiT-style augmentation.

  python -m jaxscale.main --config configs/vit_s16_cifar10.py --workdir gs://BUCKET/vit_s16_c10

Recipe: the DeiT training recipe (Touvron et al. 2021) at CIFAR scale: AdamW (b2 0.999) with peak
learning rate 5e-4 x batch/512, 300 epochs, 5 warmup epochs, cosine decay, weight decay 0.05,
label smoothing 0.1, random-resized crops, flips, RandAugment(2, 9), mixup 0.8 and cutmix 1.0. ViTs
trained from scratch on CIFAR are far below ResNets (~80-90%) without pre-training; this config is a
scaling-study baseline, not a SOTA recipe. For native 32x32 input use
`--config.dataset.image_size=32 --config.model.patch_size=4` (64 patches).
"""

import pathlib

from jaxscale.config import config_base
from jaxscale.models import vit

TRAIN_IMAGES = 45_000  # 50,000 less the 5,000 held out as the validation split.


def get_config():
  # The DeiT recipe of configs/vit_b16_imagenet.py on CIFAR-10, with ViT-S/16.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('vit_b16_imagenet.py'))
  c.dataset.update(name='cifar10', shuffle_buffer_size=50_000)
  c.model.update(vit.size_config('S/16'))

  # Its epochs, evaluations and learning rate at batch 512. 20 eval batches: the 5,000 validation
  # images held out of train, or with --config.dataset.eval_split=test the whole 10,000-image
  # test split (padding weighs 0).
  c.batch_size = 512
  epochs = 300
  c.update(num_train_steps=epochs * TRAIN_IMAGES // c.batch_size,  # 26,367
           eval_every_steps=1_000, checkpoint_every_steps=1_000, num_eval_batches=20)
  c.optimizer.learning_rate = 5e-4 * c.batch_size / 512
  c.optimizer.warmup_steps = 5 * TRAIN_IMAGES // c.batch_size
  return c
