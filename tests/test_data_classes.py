"""`config.dataset.classes`: a label subset, relabelled 0..k-1, on train and eval (digits, text)."""

import numpy as np
import pytest

from jaxscale.config import validation

from jaxscale.train import checks
from jaxscale.config.config_base import get_base_config
from jaxscale.data import get_datasets, subsets
from jaxscale.data.builders import digits as digits_builder
from jaxscale.data.builders import stdlib_packages as stdlib_packages_builder
from tests.helpers import first_batches, tiny_config

BATCH = 8
CLASSES = (7, 5, 9, 6, 8)  # Not sorted: new id i is source label CLASSES[i].


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def raw(data_dir):
  """Source images and labels, and each split's source indices (the dataset built once)."""
  get_datasets(_config(data_dir), local_batch_size=BATCH, num_eval_batches=1, seed=0)
  images, labels = digits_builder.load_images_and_labels()
  builder = digits_builder.Digits(data_dir=data_dir)
  indices = {split: [int(e['index']) for e in builder.as_dataset(
      split=split, shuffle_files=False).as_numpy_iterator()] for split in ('train', 'test')}
  return images, labels, indices


def _config(data_dir, **overrides):
  config = get_base_config().dataset
  config.name, config.data_dir = 'digits', data_dir
  config.image_size, config.shuffle_buffer_size = 8, 0  # Native size, stored order.
  config.update(overrides)
  return config


def _load(config, **overrides):
  kwargs = dict(local_batch_size=BATCH, num_eval_batches=2, seed=0) | overrides
  return get_datasets(config, **kwargs)


def _rows(batches, images):
  """(source index, new label) of every weight-1 row of unaugmented 8x8 digits batches."""
  lookup = {image.tobytes(): index for index, image in enumerate(images)}
  rows = []
  for batch in batches:
    pixels = np.round((batch['image'][..., 0] * 0.5 + 0.5) * 255).astype(np.uint8)[..., None]
    for image, label, weight in zip(pixels, batch['labels'], batch['weights']):
      if weight:
        assert label.sum() == 1
        rows.append((lookup[image.tobytes()], int(label.argmax())))
  return rows


def _held_out(labels, indices):
  """Whether each train example is in the validation share digits holds out of train."""
  return subsets.holdout_mask(labels[indices['train']], subsets.HOLDOUT)


def test_train_keeps_only_the_classes_relabelled_in_the_given_order(data_dir, raw):
  images, labels, indices = raw
  datasets = _load(_config(data_dir, classes=CLASSES))
  held_out = _held_out(labels, indices)
  kept = [i for i, out in zip(indices['train'], held_out) if labels[i] in CLASSES and not out]
  assert 0 < held_out.sum() < len(held_out) // 5
  assert datasets.num_classes == 5 and datasets.class_names == tuple(map(str, CLASSES))
  assert datasets.info['num_train_labels'] == len(kept) and datasets.info['classes'] == [*CLASSES]
  # No shuffle: the first len(kept) rows are one pass over the kept train images.
  rows = _rows(first_batches(datasets.train, -(-len(kept) // BATCH)), images)[:len(kept)]
  assert sorted(index for index, _ in rows) == sorted(kept)
  assert all(CLASSES[label] == labels[index] for index, label in rows)
  assert first_batches(datasets.train, 1)[0]['labels'].shape == (BATCH, 5)


def test_train_fraction_of_classes_takes_the_same_examples_of_each_class(data_dir, raw):
  images, labels, indices = raw
  train_labels = labels[indices['train']]
  whole = subsets.kept_mask(train_labels, 0.1, holdout=subsets.HOLDOUT)
  of_classes = subsets.kept_mask(train_labels, 0.1, CLASSES, holdout=subsets.HOLDOUT)
  np.testing.assert_array_equal(of_classes, whole & np.isin(train_labels, CLASSES))
  assert not (of_classes & _held_out(labels, indices)).any()
  datasets = _load(_config(data_dir, classes=CLASSES, train_fraction=0.1))
  expected = [indices['train'][i] for i in np.flatnonzero(of_classes)]
  assert datasets.info['num_train_labels'] == len(expected)
  rows = _rows(first_batches(datasets.train, -(-len(expected) // BATCH)), images)[:len(expected)]
  assert sorted(index for index, _ in rows) == sorted(expected)
  assert all(CLASSES[label] == labels[index] for index, label in rows)


@pytest.mark.parametrize('eval_split', ['', 'test'])
@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_counts_every_kept_example_once(data_dir, raw, process_count, eval_split):
  """The default eval split (the validation share held out of train) or, when asked, test."""
  images, labels, indices = raw
  if eval_split == 'test':
    candidates = indices['test']
  else:
    candidates = [i for i, out in zip(indices['train'], _held_out(labels, indices)) if out]
  kept = [i for i in candidates if labels[i] in CLASSES]
  config = _config(data_dir, classes=CLASSES, eval_split=eval_split)
  batch = 64 // process_count
  rows = []
  for process_index in range(process_count):
    # 5 global batches of 64: 320 slots, the kept images first, the rest weight-0 padding.
    datasets = _load(config, local_batch_size=batch, num_eval_batches=5,
                     process_index=process_index, process_count=process_count)
    batches = first_batches(datasets.eval, 10)
    assert len(batches) == 5
    weights = np.concatenate([b['weights'] for b in batches])
    padding = weights == 0
    assert (np.concatenate([b['labels'] for b in batches])[padding] == 0).all()
    rows += _rows(batches, images)
  assert datasets.info['num_eval_examples'] == len(kept)
  assert datasets.info['num_eval_batches_for_whole_split'] == -(-len(kept) // 64)
  assert sorted(index for index, _ in rows) == sorted(kept)  # Each once, none missing.
  assert all(CLASSES[label] == labels[index] for index, label in rows)


def test_text_classes_follow_the_same_path(tmp_path):
  config = get_base_config().dataset
  config.name, config.data_dir, config.seq_len = 'stdlib_packages', str(tmp_path), 32
  config.classes = (3, 0)
  datasets = get_datasets(config, local_batch_size=BATCH, num_eval_batches=1, seed=0)
  names = stdlib_packages_builder.CLASSES
  assert datasets.num_classes == 2 and datasets.class_names == (names[3], names[0])
  assert datasets.info['class_names'] == [names[3], names[0]]
  for batch in first_batches(datasets.train, 2) + first_batches(datasets.eval, 1):
    assert batch['labels'].shape == (BATCH, 2)


@pytest.mark.parametrize('classes, message', [
    ((3,), 'at least two distinct'), ((1, 1), 'at least two distinct'),
    ((-1, 2), 'at least two distinct'), ((True, 2), 'at least two distinct')])
def test_config_validation_checks_classes(classes, message):
  config = tiny_config(**{'dataset.classes': classes})
  with pytest.raises(validation.ConfigError, match=message):
    checks.validate(config)


def test_classes_outside_the_dataset_are_named(data_dir, raw):
  with pytest.raises(validation.ConfigError, match=r'\[10\] are not labels'):
    _load(_config(data_dir, classes=(0, 10)))


def test_classes_need_a_classification_dataset(tmp_path):
  config = get_base_config().dataset
  config.name, config.data_dir, config.classes = 'markov', str(tmp_path), (0, 1)
  with pytest.raises(validation.ConfigError, match='needs a classification dataset'):
    get_datasets(config, local_batch_size=BATCH, num_eval_batches=1, seed=0)


def test_a_cached_subset_resumes_from_an_iterator_checkpoint(data_dir, raw, tmp_path):
  import tensorflow as tf  # noqa: PLC0415
  config = _config(data_dir, classes=CLASSES, train_fraction=0.05, shuffle_buffer_size=16,
                   loader='tfdata')
  iterator = iter(_load(config).train)
  for _ in range(6):  # Into the second pass over the ~38 kept images: served from the cache.
    next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  expected = [next(iterator)['image'].numpy() for _ in range(8)]
  restored = iter(_load(config).train)
  tf.train.Checkpoint(iterator=restored).restore(path)
  for image in expected:
    np.testing.assert_array_equal(next(restored)['image'].numpy(), image)


def test_a_subset_resumes_from_the_grain_batch_count(data_dir, raw):
  config = _config(data_dir, classes=CLASSES, train_fraction=0.05, shuffle_buffer_size=16)
  iterator = iter(_load(config).train)
  for _ in range(6):  # Into the second pass over the ~38 kept images.
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)['image'] for _ in range(8)]
  restored = iter(_load(config).train)
  restored.set_state(state)
  for image in expected:
    np.testing.assert_array_equal(next(restored)['image'], image)
