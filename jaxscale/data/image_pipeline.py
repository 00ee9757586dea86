"""tf.data pipelines from an `ImageSource` to batches of images and one-hot labels, and the
TensorFlow preprocessing that the index-based train stream (`indexed_image_pipeline`) shares.

A batch holds `image` (float32 [B, S, S, 3], normalised per channel as the source says),
`labels` (float32 [B, K]: one-hot, or mixtures under mixup/cutmix) and `weights` (float32 [B]).
Grayscale images are repeated to 3 channels, so one model fits every dataset.
Train (`config.dataset.loader='tfdata'`; the default 'grain' is `indexed_image_pipeline`): this
process's shard (of `config.dataset.train_fraction` of the labels, see `subsets`), repeated
forever, shuffled in a buffer, augmented as the config asks. Every random draw is stateless,
seeded from the run seed, the process and the element's position, so the stream is deterministic
and the iterator is checkpointable with `tf.train.Checkpoint(iterator=iter(dataset))`; that
checkpoint holds the whole shuffle buffer (for ImageNet, ~1.8 GB of JPEGs per host and save).
Eval: the first images of the held-out split, eval preprocessing only, the same on every call.
Its images are cached still encoded and decoded on each pass: a decoded float32 cache of
ImageNet's validation set at 224 px would hold ~30 GB per host.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data import augment, subsets
from jaxscale.data.pipeline import deterministic
from jaxscale.data.sources import ImageSource

AUTOTUNE = tf.data.AUTOTUNE
# Images stay encoded until this pipeline decodes them: eval decodes only this process's rows,
# and shuffle buffers (which train checkpoints store) hold compressed bytes.
_ENCODED = {'image': tfds.decode.SkipDecoding()}


def stateless_seed(*entropy: int) -> tf.Tensor:
  """An int64 [2] seed for the `tf.random.stateless_*` ops, mixed from the given integers."""
  words = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
  return tf.constant(words.astype(np.int64))


def _to_rgb(image):
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def _decode(source: ImageSource, encoded) -> tf.Tensor:
  """float32 [H, W, 3], values in [0, 255]."""
  image = tf.cast(source.builder.info.features['image'].decode_example(encoded), tf.float32)
  return _to_rgb(image)


def _decode_random_resized_crop(source: ImageSource, encoded, *, size: int, seed):
  feature = source.builder.info.features['image']
  if feature.encoding_format == 'jpeg':  # ImageNet: decode only the crop.
    return _to_rgb(augment.random_resized_crop_jpeg(
        encoded, size=size, channels=feature.shape[-1], seed=seed))
  return augment.random_resized_crop(_decode(source, encoded), size=size, seed=seed)


def _normalize(source: ImageSource, image):
  return (image / 255.0 - tf.constant(source.mean)) / tf.constant(source.std)


def _eval_geometry(source: ImageSource, image, size: int):
  """Resize to [size, size], or (ImageNet-style) resize the shorter side and centre-crop."""
  if source.eval_crop_fraction is None:
    return augment.resize(image, size)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / source.eval_crop_fraction / tf.reduce_min(shape)
  resized_hw = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, resized_hw, method='bilinear', antialias=True)
  top, left = (resized_hw[0] - size) // 2, (resized_hw[1] - size) // 2
  return image[top:top + size, left:left + size]


def _example(source: ImageSource, image, label, size: int):
  return {'image': tf.ensure_shape(_normalize(source, image), [size, size, 3]),
          'labels': tf.one_hot(label, source.num_classes, dtype=tf.float32),
          'weights': tf.constant(1.0)}


def train_preprocess(source: ImageSource, dataset_config):
  """`(example, seed) -> example`: decode, crop, flip, RandAugment, normalise, one-hot."""
  size = dataset_config.image_size
  randaugment = None
  if dataset_config.randaugment_layers > 0:
    randaugment = augment.make_randaugment(
        dataset_config.randaugment_layers, dataset_config.randaugment_magnitude)

  def preprocess(example, seed):
    crop_seed, flip_seed, randaugment_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    if dataset_config.crop == 'random_resized_crop':
      image = _decode_random_resized_crop(source, example['image'], size=size, seed=crop_seed)
    else:  # The eval geometry (resize, or resize and centre-crop), then maybe pad and crop.
      image = _eval_geometry(source, _decode(source, example['image']), size)
      if dataset_config.crop == 'pad_and_crop':
        image = augment.pad_and_crop(image, padding=dataset_config.crop_padding, seed=crop_seed)
    image = tf.ensure_shape(image, [size, size, 3])
    if dataset_config.flip:
      image = augment.flip_left_right(image, seed=flip_seed)
    if randaugment is not None:
      image = randaugment(image, randaugment_seed)
    return _example(source, image, example['label'], size)
  return preprocess


def mixes(dataset_config) -> bool:
  return dataset_config.mixup_alpha > 0 or dataset_config.cutmix_alpha > 0


def mix(batch, dataset_config, seed):
  """The batch with mixup or cutmix applied to its images and labels (one draw per batch)."""
  image, labels = augment.mixup_or_cutmix(
      batch['image'], batch['labels'], mixup_alpha=dataset_config.mixup_alpha,
      cutmix_alpha=dataset_config.cutmix_alpha, seed=seed)
  return {**batch, 'image': image, 'labels': labels}


def train_dataset(source: ImageSource, dataset_config, *, batch_size: int, seed: int,
                  process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's infinite stream of shuffled, augmented batches, deterministic for the seed."""
  file_seed, shuffle_seed = np.random.SeedSequence(seed).generate_state(2)
  # Augmentation draws differ between processes (they read different images anyway).
  image_seed = stateless_seed(seed, process_index, 1)
  batch_seed = stateless_seed(seed, process_index, 2)
  examples = subsets.train_examples(
      source.builder, source.train_split, fraction=dataset_config.train_fraction,
      file_seed=file_seed, process_index=process_index, process_count=process_count,
      decoders=_ENCODED, classes=source.classes, holdout=source.holdout)
  # Repeating before the shuffle makes each epoch come out in a new order.
  examples = examples.repeat()
  if dataset_config.shuffle_buffer_size > 1:
    examples = examples.shuffle(dataset_config.shuffle_buffer_size, seed=int(shuffle_seed))
  preprocess = train_preprocess(source, dataset_config)
  # The running index gives each image its own seed (enumerate is checkpointed with the rest).
  images = examples.enumerate().map(
      lambda index, example: preprocess(
          example, tf.random.experimental.stateless_fold_in(image_seed, index)),
      num_parallel_calls=AUTOTUNE)
  batches = images.batch(batch_size, drop_remainder=True)
  if mixes(dataset_config):
    batches = batches.enumerate().map(
        lambda index, batch: mix(batch, dataset_config,
                                 tf.random.experimental.stateless_fold_in(batch_seed, index)),
        num_parallel_calls=AUTOTUNE)
  return batches.prefetch(AUTOTUNE).with_options(deterministic())


def eval_dataset(source: ImageSource, *, image_size: int, batch_size: int, num_batches: int,
                 process_index: int, process_count: int) -> tf.data.Dataset:
  """Exactly num_batches batches of the fixed held-out set; this process's rows of each.

  The global eval set is the eval split's first num_batches * global_batch images in stored
  order (the split: `source.eval_split`, or train's held-out part, see `subsets.eval_examples`);
  global batch b holds images [b*G, (b+1)*G) and process p its rows [p*B, (p+1)*B), so the set
  (and the eval loss) does not depend on the number of processes. Past the end of the split come
  zero images with zero labels and weight 0. With `source.classes`, the split is first cut to
  those classes (relabelled), so each kept image still counts exactly once.
  """
  global_batch_size = batch_size * process_count
  examples = subsets.eval_examples(source, decoders=_ENCODED)
  mine = examples.take(num_batches * global_batch_size).enumerate().filter(
      lambda index, _: index % global_batch_size // batch_size == process_index)
  # Only this process's rows, still encoded: decoding again each pass is cheaper than holding
  # the decoded float32 images.
  real = mine.cache().map(
      lambda _, example: _example(
          source, _eval_geometry(source, _decode(source, example['image']), image_size),
          example['label'], image_size),
      num_parallel_calls=AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([image_size, image_size, 3]),
      'labels': tf.zeros([source.num_classes]),
      'weights': tf.constant(0.0)}).repeat()
  batches = real.concatenate(padding).take(num_batches * batch_size).batch(
      batch_size, drop_remainder=True)
  return batches.prefetch(AUTOTUNE).with_options(deterministic())
