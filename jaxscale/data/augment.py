"""Random image augmentations for tf.data, each a pure function of its inputs and a seed.

Every op takes a stateless seed (int32 [2]) and draws only with `tf.random.stateless_*`, so a
pipeline that derives the seeds from its own seed and each element's position is deterministic
and its iterator stays checkpointable. Per-image ops take a float32 [H, W, C] image with values
in [0, 255]; the batch ops (mixup, cutmix) take normalised images and one-hot labels.
"""

import importlib.util

import tensorflow as tf

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError

# Inception-style random resized crop: the crop covers this fraction of the image's area and has
# an aspect ratio (width / height) in this range, before it is resized to the output size.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# RandAugment strength: magnitude M on the RandAugment paper's 0..30 scale -> keras factor M / 30.
MAX_RANDAUGMENT_MAGNITUDE = 30

CROPS = ('none', 'pad_and_crop', 'random_resized_crop')


@validation.register_check
def check_augmentation(config):
  """The image keys of config.dataset (they only shape image datasets' training stream)."""
  d = config.dataset
  validation.check_choice('config.dataset.crop', d.crop, CROPS)
  if d.image_size <= 0:
    raise ConfigError(f'config.dataset.image_size={d.image_size} must be positive.')
  for key in ('crop_padding', 'randaugment_layers', 'mixup_alpha', 'cutmix_alpha'):
    if d[key] < 0:
      raise ConfigError(f'config.dataset.{key}={d[key]} must be >= 0 (0 turns it off).')
  if not 0 <= d.randaugment_magnitude <= MAX_RANDAUGMENT_MAGNITUDE:
    raise ConfigError(f'config.dataset.randaugment_magnitude={d.randaugment_magnitude} must be in '
                      f'[0, {MAX_RANDAUGMENT_MAGNITUDE}].')
  if d.randaugment_layers > 0 and importlib.util.find_spec('keras') is None:
    raise ConfigError(f'config.dataset.randaugment_layers={d.randaugment_layers} needs Keras 3 '
                      '(keras.layers.RandAugment), which is not installed; install keras or set 0.')


def resize(image, size: int):
  """Bilinear (antialiased when shrinking) resize to [size, size]; a no-op at that size already."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  resized = tf.image.resize(image, [size, size], method='bilinear', antialias=True)
  return tf.ensure_shape(resized, [size, size, image.shape[-1]])


def pad_and_crop(image, *, padding: int, seed):
  """Zero-pads each side by `padding` pixels, then crops back to the original size at random."""
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


def sample_crop_box(image_shape, *, seed):
  """(offset, size) of a random box of 8-100% of the area and aspect 3/4-4/3 (Inception style).

  After 10 rejected draws the whole image is used (TF's `use_image_if_no_bounding_boxes`).
  `image_shape` is [H, W, C]; the results are [y, x, 0] and [h, w, -1].
  """
  offset, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.zeros([0, 0, 4]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
      area_range=CROP_AREA_RANGE, max_attempts=10, use_image_if_no_bounding_boxes=True)
  return offset, box_size


def random_resized_crop(image, *, size: int, seed):
  """A random box (see `sample_crop_box`) of a decoded image, resized to [size, size]."""
  offset, box_size = sample_crop_box(tf.shape(image), seed=seed)
  return resize(tf.slice(image, offset, box_size), size)


def random_resized_crop_jpeg(jpeg_bytes, *, size: int, channels: int, seed):
  """`random_resized_crop` of a JPEG, decoding only the box (the usual ImageNet-input shortcut)."""
  offset, box_size = sample_crop_box(tf.image.extract_jpeg_shape(jpeg_bytes), seed=seed)
  window = tf.stack([offset[0], offset[1], box_size[0], box_size[1]])
  crop = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=channels)
  return resize(tf.cast(crop, tf.float32), size)


def flip_left_right(image, *, seed):
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _beta(alpha: float, seed):
  """One draw of Beta(alpha, alpha), as a ratio of two Gamma(alpha) draws."""
  gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
  return gammas[0] / (gammas[0] + gammas[1])


def mixup(images_bxhxwxc, labels_bxk, *, alpha: float, seed):
  """Each image (and label) becomes lam * itself + (1 - lam) * its partner, lam ~ Beta(a, a).

  Partners pair up within the batch: row i with row B-1-i (the batch is already shuffled). One
  lam per batch, as in the mixup paper and timm.
  """
  lam = _beta(alpha, seed)
  images = lam * images_bxhxwxc + (1 - lam) * tf.reverse(images_bxhxwxc, axis=[0])
  labels = lam * labels_bxk + (1 - lam) * tf.reverse(labels_bxk, axis=[0])
  return images, labels


def cutmix(images_bxhxwxc, labels_bxk, *, alpha: float, seed):
  """A box of the partner image (row B-1-i) is pasted into each image; lam ~ Beta(a, a).

  The box covers about 1 - lam of the image, is centred uniformly at random and clipped at the
  borders; labels are mixed by the area actually kept. One box per batch.
  """
  beta_seed, centre_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  lam = _beta(alpha, beta_seed)
  height, width = tf.shape(images_bxhxwxc)[1], tf.shape(images_bxhxwxc)[2]
  side = tf.sqrt(1.0 - lam)
  box_h = tf.cast(side * tf.cast(height, tf.float32), tf.int32)
  box_w = tf.cast(side * tf.cast(width, tf.float32), tf.int32)
  centre = tf.random.stateless_uniform([2], seed=centre_seed, maxval=1.0)
  centre_y = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
  centre_x = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
  top, bottom = tf.maximum(centre_y - box_h // 2, 0), tf.minimum(centre_y + box_h // 2, height)
  left, right = tf.maximum(centre_x - box_w // 2, 0), tf.minimum(centre_x + box_w // 2, width)
  rows, cols = tf.range(height), tf.range(width)
  in_box_hxw = ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None]
  in_box = tf.cast(in_box_hxw, images_bxhxwxc.dtype)[None, :, :, None]
  images = (1 - in_box) * images_bxhxwxc + in_box * tf.reverse(images_bxhxwxc, axis=[0])
  kept = 1.0 - tf.reduce_mean(in_box)
  labels = kept * labels_bxk + (1 - kept) * tf.reverse(labels_bxk, axis=[0])
  return images, labels


def mixup_or_cutmix(images, labels, *, mixup_alpha: float, cutmix_alpha: float, seed):
  """Mixup or cutmix, whichever is on; with both on, each batch picks one (probability 1/2)."""
  choice_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_mixup = tf.random.stateless_uniform([], seed=choice_seed) < 0.5
    return tf.cond(use_mixup,
                   lambda: mixup(images, labels, alpha=mixup_alpha, seed=mix_seed),
                   lambda: cutmix(images, labels, alpha=cutmix_alpha, seed=mix_seed))
  if mixup_alpha > 0:
    return mixup(images, labels, alpha=mixup_alpha, seed=mix_seed)
  return cutmix(images, labels, alpha=cutmix_alpha, seed=mix_seed)


def make_randaugment(num_layers: int, magnitude: float):
  """Keras 3's RandAugment as `augment(image, seed) -> image`, drawing only from `seed`.

  The layer itself draws from a stateful `SeedGenerator` (a variable, so tf.data could neither
  replay nor checkpoint it); here every draw it makes for an image comes from that image's seed
  instead. Keras scales its ops its own way: the strength factor is magnitude / 30 and, e.g., a
  rotation is up to 360 * factor degrees, so magnitudes are not comparable with timm's or the
  paper's. Ops: shear, translation, rotation, brightness, color, contrast, sharpness,
  posterize, solarize, autocontrast, equalize.
  """
  import keras  # Imported here: only RandAugment needs it.

  class _ElementSeeds(keras.random.SeedGenerator):
    """Hands the layer a new stateless seed per draw: fold_in(element seed, draw number)."""

    def __init__(self, element_seed):  # pylint: disable=super-init-not-called
      # No super().__init__: that would create the state variable this class exists to avoid.
      self._element_seed = element_seed
      self._draws = 0

    def next(self, ordered=True):
      del ordered
      self._draws += 1
      return tf.random.experimental.stateless_fold_in(self._element_seed, self._draws)

  current_seeds = []  # The image being traced's seeds (kept off the layer: Keras tracks those).

  class _StatelessRandAugment(keras.layers.RandAugment):

    def _get_seed_generator(self, backend=None):
      del backend  # Inside tf.data the layer runs on TensorFlow whatever Keras' backend is.
      return current_seeds[-1]

  layer = _StatelessRandAugment(name='rand_augment', value_range=(0, 255), num_ops=num_layers,
                                factor=magnitude / MAX_RANDAUGMENT_MAGNITUDE)

  def augment(image, seed):
    current_seeds.append(_ElementSeeds(seed))  # Read while the layer draws (at trace time).
    try:
      return tf.clip_by_value(layer(image), 0.0, 255.0)
    finally:
      current_seeds.pop()
  return augment
