"""ResNet-50 (v1.5) on ImageNet-1k: the 90-epoch large-batch SGD recipe (~76-77% top-1).

  python -m jaxscale.main --config configs/resnet50_imagenet.py --workdir gs://BUCKET/r50_i1k

Recipe (Goyal et al. 2017, with the label smoothing and cosine decay of the flax/MLPerf examples):
batch 1024, SGD with Nesterov momentum 0.9, peak learning rate 0.1 x batch/256, 5 warmup epochs,
cosine decay to 0, weight decay 1e-4 on kernels only, label smoothing 0.1, Inception random-resized
crops at 224 plus flips, bf16 compute. Needs `imagenet2012` prepared in the TFDS data dir
(manual download; see the TFDS catalog page), e.g. --config.dataset.data_dir=gs://BUCKET/tfds.
"""

import pathlib

from jaxscale.config import config_base

TRAIN_IMAGES = 1_281_167


def get_config():
  # The SGD recipe of configs/resnet18_cifar10.py at ImageNet's scale.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('resnet18_cifar10.py'))
  c.batch_size = 1024
  epochs = 90
  # 49 eval batches: the whole 50,000-image validation split (padding weighs 0).
  c.update(num_train_steps=epochs * TRAIN_IMAGES // c.batch_size,  # 112,597
           eval_every_steps=5_000, checkpoint_every_steps=5_000, num_eval_batches=49)

  c.dataset.update(name='imagenet2012', image_size=224, shuffle_buffer_size=16_384,
                   crop='random_resized_crop')

  c.model.depth = 50
  c.model.stem = 'imagenet'

  c.optimizer.learning_rate = 0.1 * c.batch_size / 256
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 5 * TRAIN_IMAGES // c.batch_size
  c.label_smoothing = 0.1
  # Data parallel over all chips; FSDP is unnecessary for 25.6M parameters.
  return c
