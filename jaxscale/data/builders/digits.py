"""TFDS builder of scikit-learn's handwritten digits: 1,797 8x8 grayscale images, 10 classes.

The images ship inside scikit-learn (`sklearn.datasets.load_digits`), so nothing is downloaded.
Pixels (0..16 in the source) are stored as uint8 0..255. The split is fixed: a stratified 300-image
test set drawn with `train_test_split(random_state=0)` (29-31 per class) and 1,497 train images.
"""

import numpy as np
import tensorflow_datasets as tfds

from jaxscale.data import builders

NUM_TEST_EXAMPLES = 300
_SPLIT_SEED = 0
_SOURCE_MAX_PIXEL = 16


def load_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
  """All images as uint8 [1797, 8, 8, 1] (0..255) and their int64 labels, in the source order."""
  # Imported here: only building the dataset needs scikit-learn.
  from sklearn import datasets
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / _SOURCE_MAX_PIXEL)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Source indices of each split, sorted; the test set has the same class mix as the whole."""
  from sklearn import model_selection
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST_EXAMPLES, stratify=labels,
      random_state=_SPLIT_SEED)
  return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(builders.CodePathFromSourceFile, tfds.core.GeneratorBasedBuilder):
  """The UCI optical-recognition handwritten digits as bundled with scikit-learn."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            'The 8x8 handwritten digits bundled with scikit-learn (load_digits), pixels scaled '
            'from 0..16 to 0..255; a fixed stratified split of 1,497 train and 300 test images.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
            'index': np.int64,  # Position in load_digits(), for tracing an example back.
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Bundled with scikit-learn, nothing to download.
    images, labels = load_images_and_labels()
    return {split: self._generate_examples(images, labels, indices)
            for split, indices in split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    for index in indices:
      yield int(index), {'image': images[index], 'label': labels[index], 'index': index}
