"""A small ResNet-18 pretrained on half of scikit-learn's digits (classes 0-4), offline, CPU ~1 min.

  python -m jaxscale.main --config configs/resnet_digits_pretrain.py --workdir workdirs/resnet_digits_pretrain

The representation it learns is then finetuned on the other five digits, labels it never saw
(configs/resnet_digits_finetune.py): a transfer between tasks, not more training on the same one.
ResNet-18 with the CIFAR stem and 16 base channels at the native 8x8, SGD + Nesterov as in
configs/resnet_digits.py. Its convolutional features transfer better than those of the ViT of
configs/vit_digits_pretrain.py at this scale (a linear probe on 2 labels per new class: 48% vs 31%
accuracy), so benchmarks/transfer.py uses this pair for its image task.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet_digits.py'))
  # 3 eval batches: 192 slots for the validation (or test) images of classes 0-4.
  c.update(num_train_steps=600, eval_every_steps=200, checkpoint_every_steps=600,
           keep_checkpoints=1, num_eval_batches=3)

  c.dataset.classes = (0, 1, 2, 3, 4)
  c.dataset.image_size = 8
  c.dataset.crop_padding = 1       # 1-pixel shifts: a more general representation to transfer.

  c.optimizer.warmup_steps = 30
  return c
