"""ViT-S/16 on CIFAR-10 from scratch at 224x224 (CIFAR upsampled), DeiT-style augmentation.

  python -m jaxscale.main --config configs/vit_s16_cifar10.py --workdir gs://BUCKET/vit_s16_c10

Recipe: the DeiT training recipe (Touvron et al. 2021) at CIFAR scale: AdamW (b2 0.999) with peak
learning rate 5e-4 x batch/512, 300 epochs, 5 warmup epochs, cosine decay, weight decay 0.05,
label smoothing 0.1, random-resized crops, flips, RandAugment(2, 9), mixup 0.8 and cutmix 1.0. ViTs
trained from scratch on CIFAR are far below ResNets (~80-90%) without pre-training; this config is a
scaling-study baseline, not a SOTA recipe. For native 32x32 input use
`--config.dataset.image_size=32 --config.model.patch_size=4` (64 patches).
"""

import ml_collections

from jaxscale.config import config_base
from jaxscale.models import vit

TRAIN_IMAGES = 50_000


def get_config():
  c = config_base.get_base_config()
  c.batch_size = 512
  epochs = 300
  c.num_train_steps = epochs * TRAIN_IMAGES // c.batch_size   # 29,296
  c.log_every_steps = 100
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.num_eval_batches = 20          # The whole 10,000-image test split (padding weighs 0).

  c.dataset.name = 'cifar10'
  c.dataset.image_size = 224
  c.dataset.shuffle_buffer_size = 50_000
  c.dataset.crop = 'random_resized_crop'
  c.dataset.flip = True
  c.dataset.randaugment_layers = 2
  c.dataset.randaugment_magnitude = 9
  c.dataset.mixup_alpha = 0.8
  c.dataset.cutmix_alpha = 1.0

  c.model = ml_collections.ConfigDict(vit.size_config('S/16'))
  c.model.name = 'vit'
  c.model.num_classes = 0
  c.model.image_size = 0
  c.model.pooling = 'cls'
  c.model.dtype = 'bfloat16'

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-4 * c.batch_size / 512
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 5 * TRAIN_IMAGES // c.batch_size
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  return c
