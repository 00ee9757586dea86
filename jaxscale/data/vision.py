"""Image classification datasets: digits (embedded), cifar10, cifar100, imagenet2012.

digits is built locally on first use from the copy bundled with scikit-learn. The others load
through their real TFDS builders from a prepared data dir (tested offline with
`tfds.testing.mock_data`); nothing here downloads them.
digits, cifar10 and cifar100 have no validation split: each holds out a stratified tenth of
train as 'validation' (never trained on), their default eval split; 'test' is scored only when a
config asks for it (`dataset.eval_split='test'`).
Normalisation: digits maps pixels to [-1, 1]; cifar and imagenet use their per-channel train-set
mean and std.
"""

import tensorflow_datasets as tfds

from jaxscale.data import sources, subsets
from jaxscale.data.builders import digits as digits_builder
from jaxscale.data.prepare import add_array_record, prepare
from jaxscale.data.sources import DATASETS, ImageSource, data_dir_or_default

_MINUS_ONE_TO_ONE = {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
_CIFAR10_STATS = {'mean': (0.4914, 0.4822, 0.4465), 'std': (0.2470, 0.2435, 0.2616)}
_CIFAR100_STATS = {'mean': (0.5071, 0.4865, 0.4409), 'std': (0.2673, 0.2564, 0.2762)}
_IMAGENET_STATS = {'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)}
# The usual ImageNet eval: resize the shorter side to image_size / 0.875, take the centre square.
IMAGENET_EVAL_CROP_FRACTION = 0.875

_HOW_TO_PREPARE = {
    'cifar10': 'run `tfds build cifar10 --data_dir=DIR` on a machine with internet (~160 MB)',
    'cifar100': 'run `tfds build cifar100 --data_dir=DIR` on a machine with internet (~160 MB)',
    'imagenet2012': (
        'download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into '
        'DIR/downloads/manual, then run `tfds build imagenet2012 --data_dir=DIR`'),
}


def image_source(builder, *, train_split: str, eval_split: str, stats: dict,
                 eval_crop_fraction: float | None = None, holdout: float = 0.0) -> ImageSource:
  return ImageSource(
      builder=builder, train_split=train_split, eval_split=eval_split, holdout=holdout,
      num_classes=builder.info.features['label'].num_classes, eval_crop_fraction=eval_crop_fraction,
      class_names=sources.class_names_of(builder),
      info={f'num_{name}_examples': split.num_examples
            for name, split in builder.info.splits.items()},
      **stats)


def prepared_builder(name: str, dataset_config) -> tfds.core.DatasetBuilder:
  return sources.prepared_builder(name, dataset_config, _HOW_TO_PREPARE[name])


@DATASETS.register('digits')
def digits(dataset_config) -> ImageSource:
  """8x8 grayscale digits, resized (bilinear) to image_size and repeated to 3 channels."""
  builder = digits_builder.Digits(data_dir=data_dir_or_default(dataset_config),
                                  file_format='tfrecord')
  prepare(builder)  # Reads scikit-learn's copy the first time; a no-op after.
  add_array_record(builder)  # For the index-based train pipeline; tf.data reads the tfrecords.
  return image_source(builder, train_split='train', eval_split='validation',
                      stats=_MINUS_ONE_TO_ONE, holdout=subsets.HOLDOUT)


@DATASETS.register('cifar10')
def cifar10(dataset_config) -> ImageSource:
  return image_source(prepared_builder('cifar10', dataset_config), train_split='train',
                      eval_split='validation', stats=_CIFAR10_STATS, holdout=subsets.HOLDOUT)


@DATASETS.register('cifar100')
def cifar100(dataset_config) -> ImageSource:
  return image_source(prepared_builder('cifar100', dataset_config), train_split='train',
                      eval_split='validation', stats=_CIFAR100_STATS, holdout=subsets.HOLDOUT)


@DATASETS.register('imagenet2012')
def imagenet2012(dataset_config) -> ImageSource:
  return image_source(prepared_builder('imagenet2012', dataset_config), train_split='train',
                      eval_split='validation', stats=_IMAGENET_STATS,
                      eval_crop_fraction=IMAGENET_EVAL_CROP_FRACTION)
