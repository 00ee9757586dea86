"""ViT-B/16 on ImageNet-1k from scratch: the DeiT-B recipe (~81.8% top-1 at 300 epochs).

  python -m jaxscale.main --config configs/vit_b16_imagenet.py --workdir gs://BUCKET/vit_b16_i1k

Recipe (Touvron et al. 2021, DeiT-B without distillation): batch 1024, AdamW (b1 0.9, b2 0.999),
peak learning rate 5e-4 x batch/512, 5 warmup epochs, cosine decay, weight decay 0.05, label
smoothing 0.1, RandAugment(2, 9), mixup 0.8, cutmix 1.0, random-resized crops at 224 plus flips,
class-token pooling, bf16 compute. DeiT also uses random erasing, repeated augmentation and
stochastic depth 0.1, which jaxscale does not implement. Parameters are FSDP-sharded over the
`fsdp` mesh axis when --config.mesh.fsdp > 1.
"""

import pathlib

import ml_collections

from jaxscale.config import config_base
from jaxscale.models import vit

TRAIN_IMAGES = 1_281_167


def get_config():
  # ImageNet, batch, evaluation, crops, flips and label smoothing as configs/resnet50_imagenet.py;
  # DeiT's schedule, augmentation, model and optimizer.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet50_imagenet.py'))
  epochs = 300
  c.num_train_steps = epochs * TRAIN_IMAGES // c.batch_size   # 375,341

  c.dataset.randaugment_layers = 2
  c.dataset.randaugment_magnitude = 9
  c.dataset.mixup_alpha = 0.8
  c.dataset.cutmix_alpha = 1.0

  c.model = ml_collections.ConfigDict(vit.size_config('B/16'))
  c.model.name = 'vit'
  c.model.num_classes = 0
  c.model.image_size = 0
  c.model.pooling = 'cls'
  c.model.dtype = 'bfloat16'

  c.optimizer = config_base.get_base_config().optimizer
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-4 * c.batch_size / 512
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 5 * TRAIN_IMAGES // c.batch_size
  c.optimizer.min_lr_ratio = 0.0
  return c
