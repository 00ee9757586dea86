"""Text classification: the embedded stdlib_packages, mocked glue/sst2 and imdb_reviews, the
batch contract, train_fraction subsets (text and images)."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxscale.config import validation

from jaxscale.train import checks
from jaxscale.config.config_base import get_base_config
from jaxscale.data import get_datasets, special_tokens, subsets
from jaxscale.data.sources import DATASETS
from jaxscale.data.builders import python_stdlib
from jaxscale.data.builders import stdlib_packages as stdlib_packages_builder
from tests.helpers import (assert_halves_make_the_whole, assert_iterator_checkpoint_resumes,
                           assert_same_batches, first_batches, tiny_config)

BATCH = 8
SEQ_LEN = 64
NUM_CLASSES = len(stdlib_packages_builder.CLASSES)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  get_datasets(_config(data_dir), local_batch_size=BATCH, num_eval_batches=1, seed=0)  # Builds.
  return data_dir


@pytest.fixture(scope='module')
def splits(data_dir):
  """Each split's examples in stored order, as numpy."""
  builder = stdlib_packages_builder.StdlibPackages(data_dir=data_dir)
  return {split: list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
          for split in stdlib_packages_builder.SPLITS}


def _config(data_dir, **overrides):
  config = get_base_config().dataset
  config.name, config.data_dir, config.seq_len = 'stdlib_packages', data_dir, SEQ_LEN
  config.shuffle_buffer_size = 64
  config.update(overrides)
  return config


def _load(config, **overrides):
  kwargs = dict(local_batch_size=BATCH, num_eval_batches=2, seed=0) | overrides
  return get_datasets(config, **kwargs)


def _rows(batches):
  """(label, token tuple) of every real row of the batches."""
  return [(int(labels.argmax()), tuple(inputs[mask == 1]))
          for batch in batches
          for inputs, mask, labels, weight in zip(batch['inputs'], batch['input_mask'],
                                                  batch['labels'], batch['weights'])
          if weight]


def _encoded(example):
  return (int(example['label']),
          (special_tokens.CLS_ID, *example['text'][:SEQ_LEN - 1]))


def test_special_tokens_follow_the_bytes():
  assert (special_tokens.PAD_ID, special_tokens.CLS_ID, special_tokens.MASK_ID) == (256, 257, 258)
  assert special_tokens.BYTE_VOCAB_WITH_SPECIALS == 259
  assert special_tokens.after(1000) == special_tokens.SpecialIds(1000, 1001, 1002, 1003)


def test_splits_share_no_file_and_every_class_is_in_every_split(splits):
  paths = {split: {example['path'] for example in examples} for split, examples in splits.items()}
  assert not paths['train'] & paths['validation']
  assert not paths['train'] & paths['test'] and not paths['validation'] & paths['test']
  assert sum(map(len, splits.values())) < 4000  # Small enough to build in seconds.
  root = python_stdlib.stdlib_root()
  for examples in splits.values():
    labels = np.array([example['label'] for example in examples])
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    assert set(labels) == set(range(NUM_CLASSES))
    for example in examples[::50]:  # A snippet is its file's bytes at its offset, in its package.
      path = example['path'].decode()
      text = (root / path).read_bytes()
      offset = int(example['offset'])
      assert example['text'] == text[offset:offset + stdlib_packages_builder.SNIPPET_BYTES]
      assert path.split('/')[0] == stdlib_packages_builder.CLASSES[example['label']]


def test_file_split_is_stable_and_fills_every_split():
  paths = ['pkg/a.py', 'pkg/b.py', 'pkg/c.py']
  split = stdlib_packages_builder.split_files(paths)
  assert sorted(sum(split.values(), [])) == paths and all(len(s) == 1 for s in split.values())
  assert split == stdlib_packages_builder.split_files(paths[::-1])
  many = stdlib_packages_builder.split_files([f'pkg/{i}.py' for i in range(40)])
  assert (len(many['test']), len(many['validation']), len(many['train'])) == (4, 4, 32)


def test_batches_have_the_contract_shapes_and_values(data_dir):
  datasets = _load(_config(data_dir))
  assert (datasets.task, datasets.num_classes, datasets.vocab_size) == ('classification', 16, 259)
  assert datasets.class_names == stdlib_packages_builder.CLASSES
  assert datasets.info['num_train_examples'] == datasets.info['num_train_labels'] > 1000
  for batch in first_batches(datasets.train, 3) + first_batches(datasets.eval, 2):
    assert set(batch) == {'inputs', 'input_mask', 'labels', 'weights'}
    for key, shape, dtype in [('inputs', (BATCH, SEQ_LEN), np.int32),
                              ('input_mask', (BATCH, SEQ_LEN), np.int32),
                              ('labels', (BATCH, NUM_CLASSES), np.float32),
                              ('weights', (BATCH,), np.float32)]:
      assert batch[key].shape == shape and batch[key].dtype == dtype
    assert (batch['inputs'][:, 0] == special_tokens.CLS_ID).all()
    assert (batch['inputs'][:, 1:] < 256).sum() == batch['input_mask'][:, 1:].sum()  # Bytes.
    assert (batch['inputs'][batch['input_mask'] == 0] == special_tokens.PAD_ID).all()
    # The mask is a prefix of ones: real tokens first, then padding.
    np.testing.assert_array_equal(np.sort(batch['input_mask'], axis=1)[:, ::-1],
                                  batch['input_mask'])
    np.testing.assert_array_equal(batch['labels'].sum(1), batch['weights'])


def test_eval_holds_every_example_once_in_stored_order(data_dir, splits):
  config = _config(data_dir)
  num_examples = len(splits['validation'])
  num_batches = _load(config).info['num_eval_batches_for_whole_split']
  assert (num_batches - 1) * BATCH < num_examples <= num_batches * BATCH
  batches = first_batches(_load(config, num_eval_batches=num_batches).eval, num_batches + 5)
  assert len(batches) == num_batches
  weights = np.concatenate([batch['weights'] for batch in batches])
  assert weights.sum() == num_examples and (weights[:num_examples] == 1).all()
  assert _rows(batches) == [_encoded(example) for example in splits['validation']]
  # Padding rows: an empty text (CLS, then PAD) with zero labels.
  last = batches[-1]
  padding = last['weights'] == 0
  assert (last['labels'][padding] == 0).all() and (last['input_mask'][padding].sum(1) == 1).all()
  # Two processes hold their rows of the same global batches.
  halves = [first_batches(_load(config, local_batch_size=BATCH // 2, num_eval_batches=num_batches,
                                process_index=p, process_count=2).eval, num_batches)
            for p in (0, 1)]
  assert_halves_make_the_whole(batches, halves)


def test_train_is_deterministic_for_a_seed(data_dir):
  config = _config(data_dir)
  first = first_batches(_load(config).train, 3)
  assert_same_batches(first, first_batches(_load(config).train, 3))
  assert not np.array_equal(first[0]['inputs'], first_batches(_load(config, seed=1).train,
                                                               1)[0]['inputs'])


def test_stratified_subset_keeps_every_class_and_is_nested():
  labels = np.repeat(np.arange(4), [1000, 100, 10, 1])
  tenth = subsets.stratified_subset(labels, 0.1)
  np.testing.assert_array_equal(np.bincount(labels[tenth]), [100, 10, 1, 1])
  hundredth = subsets.stratified_subset(labels, 0.01)
  np.testing.assert_array_equal(np.bincount(labels[hundredth]), [10, 1, 1, 1])
  assert set(hundredth) <= set(tenth)
  np.testing.assert_array_equal(subsets.stratified_subset(labels, 1.0), np.arange(len(labels)))


def test_train_fraction_reads_a_fixed_stratified_subset(data_dir, splits):
  train_labels = np.array([example['label'] for example in splits['train']])
  expected_counts = [max(1, round(0.1 * n)) for n in np.bincount(train_labels)]
  expected = sorted(_encoded(splits['train'][index])
                    for index in subsets.stratified_subset(train_labels, 0.1))
  assert len(expected) == sum(expected_counts)
  assert abs(len(expected) - 0.1 * len(train_labels)) <= NUM_CLASSES / 2
  epochs = []
  for seed in (0, 1):
    datasets = _load(_config(data_dir, train_fraction=0.1, shuffle_buffer_size=0), seed=seed)
    assert datasets.info['num_train_labels'] == len(expected)
    rows = _rows(first_batches(datasets.train, -(-len(expected) // BATCH)))[:len(expected)]
    epochs.append(sorted(rows))
  assert epochs[0] == epochs[1] == expected  # One epoch is the subset, whatever the seed.
  np.testing.assert_array_equal(
      np.bincount([label for label, _ in epochs[0]], minlength=NUM_CLASSES), expected_counts)


def test_train_fraction_shards_the_subset_over_processes(data_dir):
  config = _config(data_dir, train_fraction=0.5, shuffle_buffer_size=0)
  num_labels = _load(config).info['num_train_labels']
  shards = []
  for process_index in (0, 1):
    datasets = _load(config, process_index=process_index, process_count=2)
    shards.append(_rows(first_batches(datasets.train, num_labels // 2 // BATCH)))
  whole = collections.Counter(_rows(first_batches(_load(config).train, num_labels // BATCH)))
  assert len(shards[0]) == len(shards[1]) == num_labels // 2 // BATCH * BATCH
  assert not collections.Counter(shards[0] + shards[1]) - whole  # Disjoint parts of one epoch.


@pytest.mark.parametrize('train_fraction', [1.0, 0.5])
def test_iterator_checkpoint_resumes_the_same_batches(data_dir, tmp_path, train_fraction):
  config = _config(data_dir, train_fraction=train_fraction)
  assert_iterator_checkpoint_resumes(lambda: _load(config).train, tmp_path, skip=3, take=2)


def test_train_fraction_applies_to_images(tmp_path_factory):
  config = get_base_config().dataset
  config.name, config.data_dir = 'digits', str(tmp_path_factory.mktemp('digits'))
  config.image_size, config.shuffle_buffer_size, config.train_fraction = 8, 0, 0.02
  datasets = _load(config, local_batch_size=5)
  assert datasets.class_names == tuple(str(digit) for digit in range(10))
  # 148 to 152 train images per class: 3 of each.
  assert datasets.info['num_train_labels'] == 30
  labels = np.concatenate([b['labels'] for b in first_batches(datasets.train, 6)]).argmax(1)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [3] * 10)


@pytest.mark.parametrize('name,class_names', [
    ('glue/sst2', ('negative', 'positive')),
    ('imdb_reviews', ('neg', 'pos')),
])
def test_real_datasets_under_mock_data(name, class_names):
  config = get_base_config().dataset
  config.name, config.seq_len = name, SEQ_LEN
  config.eval_split = 'test' if name == 'imdb_reviews' else ''  # 20 mock reviews, as for sst2.
  with tfds.testing.mock_data(num_examples=20):
    datasets = _load(config, local_batch_size=4, num_eval_batches=3, process_index=1,
                     process_count=2)
    train = first_batches(datasets.train, 2)
    evals = first_batches(datasets.eval, 5)
  assert (datasets.num_classes, datasets.class_names, datasets.vocab_size) == (
      2, class_names, special_tokens.BYTE_VOCAB_WITH_SPECIALS)
  for batch in train + evals:
    assert batch['inputs'].shape == batch['input_mask'].shape == (4, SEQ_LEN)
    assert (batch['inputs'][:, 0] == special_tokens.CLS_ID).all()
    assert (batch['inputs'][batch['input_mask'] == 0] == special_tokens.PAD_ID).all()
    assert (batch['input_mask'].sum(1)[batch['weights'] == 1] > 1).all()  # Mock texts are not empty.
  # 20 eval texts in global batches of 8: process 1 holds rows 4-7 of each; batch 3 is padding.
  assert [b['weights'].sum() for b in evals] == [4, 4, 0]


def test_imdb_reviews_evaluates_on_validation_held_out_of_train_by_default():
  config = get_base_config().dataset
  config.name, config.seq_len = 'imdb_reviews', SEQ_LEN
  # As many mock reviews as the test above (the split's labels are read once per process).
  with tfds.testing.mock_data(num_examples=20):
    datasets = _load(config, local_batch_size=4, num_eval_batches=4)
    source = DATASETS.get('imdb_reviews')(config)
    held_out = subsets.holdout_mask(subsets.split_labels(source.builder, 'train'), subsets.HOLDOUT)
    evals = first_batches(datasets.eval, 4)
    train = first_batches(datasets.train, 10)  # 40 rows: every train review at least once.
  assert datasets.eval_split == 'validation' and source.holdout == subsets.HOLDOUT
  assert 0 < held_out.sum() < 20 and sum(b['weights'].sum() for b in evals) == held_out.sum()
  assert datasets.info['num_train_labels'] == 20 - held_out.sum()
  eval_rows = {tuple(row) for b in evals for row, w in zip(b['inputs'], b['weights']) if w}
  train_rows = {tuple(row) for b in train for row in b['inputs']}
  assert len(eval_rows) == held_out.sum() and not eval_rows & train_rows


@pytest.mark.parametrize('name', ['glue/sst2', 'imdb_reviews'])
def test_a_missing_real_dataset_says_how_to_prepare_it(tmp_path, name):
  config = get_base_config().dataset
  config.name, config.data_dir = name, str(tmp_path)
  with pytest.raises(FileNotFoundError, match=f'tfds build {name} --data_dir'):
    _load(config)


@pytest.mark.parametrize('value', [0.0, -0.5, 1.5])
def test_config_validation_bounds_train_fraction(value):
  config = tiny_config(**{'dataset.train_fraction': value})
  with pytest.raises(validation.ConfigError, match=r'train_fraction=.* must be in \(0, 1\]'):
    checks.validate(config)
