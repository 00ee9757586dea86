"""ResNet-18 on CIFAR-10: the standard 200-epoch SGD recipe (~95% test accuracy).

  python -m jaxscale.main --config configs/resnet18_cifar10.py --workdir gs://BUCKET/resnet18_c10

Recipe (He et al. 2016 for the CIFAR stem; the common 200-epoch cosine variant): batch 128, SGD
with Nesterov momentum 0.9, peak learning rate 0.1, cosine decay to 0, weight decay 5e-4 (conv and
dense kernels only), pad-4-and-crop plus horizontal flips. Needs `cifar10` prepared in the TFDS
data dir (`tfds build cifar10` on a machine with internet, or copy it to --config.dataset.data_dir).
"""

import ml_collections

from jaxscale.config import config_base

TRAIN_IMAGES = 45_000  # 50,000 less the 5,000 held out as the validation split.


def get_config():
  c = config_base.get_base_config()
  c.batch_size = 128
  epochs = 200
  # 79 eval batches: the 5,000 validation images held out of train (the default eval split), or
  # with --config.dataset.eval_split=test the whole 10,000-image test split (padding weighs 0).
  c.update(num_train_steps=epochs * TRAIN_IMAGES // c.batch_size,  # 70,312
           log_every_steps=100, eval_every_steps=2_000, checkpoint_every_steps=2_000,
           num_eval_batches=79)

  c.dataset.update(name='cifar10', image_size=32, shuffle_buffer_size=50_000, crop='pad_and_crop',
                   crop_padding=4, flip=True)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet'
  c.model.num_classes = 0
  c.model.image_size = 0
  c.model.depth = 18
  c.model.width = 64
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'

  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 390       # One epoch.
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.grad_clip_norm = 0.0
  return c
