"""A small ResNet-18 pretrained on half of scikit-learn's digits (classes 0-4), offline, CPU ~1 min.

  python -m jaxscale.main --config configs/resnet_digits_pretrain.py --workdir workdirs/resnet_digits_pretrain

The representation it learns is then finetuned on the other five digits, labels it never saw
(configs/resnet_digits_finetune.py): a transfer between tasks, not more training on the same one.
ResNet-18 with the CIFAR stem and 16 base channels at the native 8x8, SGD + Nesterov as in
configs/resnet_digits.py. Its convolutional features transfer better than those of the ViT of
configs/vit_digits_pretrain.py at this scale (a linear probe on 2 labels per new class: 48% vs 31%
accuracy), so benchmarks/transfer.py uses this pair for its image task.
"""

import ml_collections

from jaxscale.config import config_base

MODEL = dict(name='resnet', num_classes=0, image_size=0, depth=18, width=16, stem='cifar')


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

  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 30
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.grad_clip_norm = 0.0
  return c
