"""Image datasets and augmentations: the embedded digits, mocked cifar10/imagenet2012, the contract."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.config import input_errors, validation

from jaxscale.train import checks
from jaxscale.config.config_base import get_base_config
from jaxscale.data import (
    DATASETS, augment, get_datasets, indexed, indexed_image_pipeline, prepare, subsets, vision)
from jaxscale.data.builders import digits as digits_builder
from tests.helpers import (assert_halves_make_the_whole, assert_iterator_checkpoint_resumes,
                           assert_same_batches, first_batches, tiny_config)

BATCH = 8
SIZE = 16


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _digits_config(data_dir, **overrides):
  config = get_base_config().dataset
  config.name, config.data_dir = 'digits', data_dir
  config.image_size, config.shuffle_buffer_size = SIZE, 256
  config.update(overrides)
  return config


def _load(config, **overrides):
  kwargs = dict(local_batch_size=BATCH, num_eval_batches=2, seed=0) | overrides
  return get_datasets(config, **kwargs)


def _assert_contract(batch, batch_size, size, num_classes):
  assert set(batch) == {'image', 'labels', 'weights'}
  assert batch['image'].shape == (batch_size, size, size, 3)
  assert batch['labels'].shape == (batch_size, num_classes)
  assert batch['weights'].shape == (batch_size,)
  assert all(value.dtype == np.float32 for value in batch.values())


def _digit_indices(batch, raw_images):
  """Source indices of the images of an image_size=8, unaugmented digits batch."""
  lookup = {image.tobytes(): index for index, image in enumerate(raw_images)}
  pixels = np.round((batch['image'][..., 0] * 0.5 + 0.5) * 255).astype(np.uint8)[..., None]
  return [lookup[image.tobytes()] for image in pixels]


def test_registry_has_the_image_datasets():
  assert {'digits', 'cifar10', 'cifar100', 'imagenet2012'} <= set(DATASETS.names())


def test_digits_builds_with_the_fixed_stratified_split(data_dir):
  _load(_digits_config(data_dir))  # Builds the dataset on first use.
  builder = digits_builder.Digits(data_dir=data_dir)
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      'train': 1497, 'test': 300}
  raw_images, raw_labels = digits_builder.load_images_and_labels()
  seen = {}
  for split in ('train', 'test'):
    examples = list(builder.as_dataset(split=split).as_numpy_iterator())
    seen[split] = {int(example['index']) for example in examples}
    for example in examples:
      assert example['image'].shape == (8, 8, 1) and example['image'].dtype == np.uint8
      np.testing.assert_array_equal(example['image'], raw_images[example['index']])
      assert example['label'] == raw_labels[example['index']]
  assert not seen['train'] & seen['test'] and len(seen['train'] | seen['test']) == 1797
  assert raw_images.max() == 255  # Source pixels 0..16 span the whole uint8 range.
  # Stratified: each class has its share of the 300 test images, to within rounding.
  test_counts = np.bincount(raw_labels[sorted(seen['test'])])
  assert np.abs(test_counts - 300 * np.bincount(raw_labels) / 1797).max() <= 1


def test_train_batches_have_the_contract_shapes_and_values(data_dir):
  datasets = _load(_digits_config(data_dir))
  assert (datasets.task, datasets.num_classes, datasets.vocab_size) == ('classification', 10, 0)
  assert datasets.info['num_train_examples'] == 1497 and datasets.info['image_size'] == SIZE
  for batch in first_batches(datasets.train, 3):
    _assert_contract(batch, BATCH, SIZE, 10)
    assert (batch['weights'] == 1).all()
    assert set(np.unique(batch['labels'])) == {0.0, 1.0} and (batch['labels'].sum(1) == 1).all()
    # Digits are normalised to [-1, 1] and gray: three equal channels.
    assert batch['image'].min() >= -1 and batch['image'].max() <= 1
    np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])


def test_train_is_deterministic_for_a_seed(data_dir):
  config = _digits_config(data_dir, crop='random_resized_crop', flip=True, mixup_alpha=0.4)
  first = first_batches(_load(config).train, 3)
  assert_same_batches(first, first_batches(_load(config).train, 3))
  other_seed = first_batches(_load(config, seed=1).train, 3)
  assert not np.array_equal(first[0]['image'], other_seed[0]['image'])


def _held_out_indices(data_dir):
  """Source indices of the train images digits holds out as its validation split."""
  builder = DATASETS.get('digits')(_digits_config(data_dir)).builder  # Prepared on first use.
  train = list(builder.as_dataset(split='train', shuffle_files=False).as_numpy_iterator())
  labels = np.array([e['label'] for e in train])
  mask = subsets.holdout_mask(labels, subsets.HOLDOUT)
  return {int(e['index']) for e, held in zip(train, mask) if held}, train


def test_two_processes_read_disjoint_shards_of_train_less_validation(data_dir):
  # No shuffle buffer, so the first 84 batches are within the first epoch of each process's
  # share of the 1,348 train images left after the 149 held out.
  config = _digits_config(data_dir, image_size=8, shuffle_buffer_size=0)
  raw_images, _ = digits_builder.load_images_and_labels()
  held_out, train = _held_out_indices(data_dir)
  train_indices = {int(e['index']) for e in train} - held_out
  assert len(held_out) == 149 and len(train_indices) == 1348
  indices = []
  for process_index in (0, 1):
    datasets = _load(config, process_index=process_index, process_count=2)
    batches = first_batches(datasets.train, 1348 // (2 * BATCH))
    indices.append({i for batch in batches for i in _digit_indices(batch, raw_images)})
  assert len(indices[0]) == len(indices[1]) == 1348 // (2 * BATCH) * BATCH  # No image twice.
  assert not indices[0] & indices[1] and indices[0] | indices[1] <= train_indices


def test_digits_evaluates_on_a_stratified_validation_carve_out_of_train(data_dir):
  config = _digits_config(data_dir, image_size=8)
  datasets = _load(config, local_batch_size=50, num_eval_batches=3)
  assert datasets.eval_split == 'validation'
  assert datasets.info['num_eval_examples'] == 149
  assert datasets.info['num_train_labels'] == 1348
  raw_images, raw_labels = digits_builder.load_images_and_labels()
  batches = first_batches(datasets.eval, 5)
  weights = np.concatenate([b['weights'] for b in batches])
  np.testing.assert_array_equal(weights, [1.0] * 149 + [0.0])
  seen = [i for b in batches for i in _digit_indices(
      {'image': b['image'][b['weights'] == 1]}, raw_images)]
  assert len(seen) == 149
  held_out, _ = _held_out_indices(data_dir)
  assert set(seen) == held_out  # Train images, never the test split...
  test_indices = {int(e['index']) for e in digits_builder.Digits(data_dir=data_dir).as_dataset(
      split='test').as_numpy_iterator()}
  assert not held_out & test_indices
  # ... a tenth of each class, the same for every seed.
  assert (np.abs(np.bincount(raw_labels[seen]) - 15) <= 1).all()
  assert_same_batches(batches, first_batches(_load(config, local_batch_size=50,
                                                   num_eval_batches=3, seed=4).eval, 5))
  # The tf.data train pipeline leaves them out too.
  tfdata = _load(_digits_config(data_dir, image_size=8, shuffle_buffer_size=0, loader='tfdata'))
  read = {i for b in first_batches(tfdata.train, 1348 // BATCH)
          for i in _digit_indices(b, raw_images)}
  assert len(read) == 1348 // BATCH * BATCH and not read & held_out


def test_an_unknown_eval_split_is_a_config_error(data_dir):
  with pytest.raises(validation.ConfigError, match=r"eval_split='dev' is not a split of 'digits'"):
    _load(_digits_config(data_dir, eval_split='dev'))
  with pytest.raises(validation.ConfigError, match='the split the run trains on'):
    _load(_digits_config(data_dir, eval_split='train'))


def test_test_split_is_scored_when_asked_fixed_padded_and_split_over_processes(data_dir):
  config = _digits_config(data_dir, eval_split='test')
  # 300 test images in 5 batches of 64: the last 20 rows are padding.
  datasets = _load(config, local_batch_size=64, num_eval_batches=5)
  assert datasets.eval_split == 'test'
  batches = first_batches(datasets.eval, 10)
  assert len(batches) == 5
  assert_same_batches(batches, first_batches(_load(config, local_batch_size=64, num_eval_batches=5,
                                             seed=3).eval, 10))
  weights = np.concatenate([b['weights'] for b in batches])
  labels = np.concatenate([b['labels'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(weights, [1.0] * 300 + [0.0] * 20)
  np.testing.assert_array_equal(labels[:300].sum(1), 1)
  assert (labels[300:] == 0).all() and (images[300:] == 0).all()
  builder = digits_builder.Digits(data_dir=data_dir)
  test_labels = [e['label'] for e in builder.as_dataset(split='test').as_numpy_iterator()]
  np.testing.assert_array_equal(labels[:300].argmax(1), test_labels)  # Stored order.
  # Two processes: each holds its rows of the same global batches.
  halves = [first_batches(_load(config, local_batch_size=32, num_eval_batches=5, process_index=p,
                         process_count=2).eval, 10) for p in (0, 1)]
  assert_halves_make_the_whole(batches, halves)


def test_eval_takes_the_first_images_when_the_split_is_larger(data_dir):
  batches = first_batches(_load(_digits_config(data_dir), num_eval_batches=2).eval, 5)
  assert len(batches) == 2 and all((b['weights'] == 1).all() for b in batches)


AUGMENTATIONS = {
    'flip': dict(flip=True),
    'pad_and_crop': dict(crop='pad_and_crop', crop_padding=4),
    'random_resized_crop': dict(crop='random_resized_crop'),
    'mixup': dict(mixup_alpha=0.4),
    'cutmix': dict(cutmix_alpha=1.0),
    'randaugment': dict(randaugment_layers=2, randaugment_magnitude=10),
}


@pytest.mark.parametrize('name', AUGMENTATIONS)
def test_each_augmentation_keeps_the_contract_and_is_deterministic(data_dir, name):
  config = _digits_config(data_dir, **AUGMENTATIONS[name])
  batches = first_batches(_load(config).train, 2)
  for batch in batches:
    _assert_contract(batch, BATCH, SIZE, 10)
    np.testing.assert_allclose(batch['labels'].sum(1), 1, rtol=1e-6)
    assert np.isfinite(batch['image']).all()
  assert_same_batches(batches, first_batches(_load(config).train, 2))
  # Same seed without the augmentation reads the same images in the same order.
  plain = first_batches(_load(_digits_config(data_dir)).train, 2)
  assert not np.array_equal(batches[0]['image'], plain[0]['image'])
  other_seed = first_batches(_load(config, seed=5).train, 2)
  assert not np.array_equal(batches[0]['image'], other_seed[0]['image'])
  if name in ('mixup', 'cutmix'):  # Labels become mixtures of two classes.
    assert np.sum((batches[0]['labels'] > 0) & (batches[0]['labels'] < 1)) > 0


def _two_images():
  """Image 0 is all 0, image 1 all 1; so a pixel's value says which image it came from."""
  images = tf.concat([tf.zeros([1, 8, 8, 3]), tf.ones([1, 8, 8, 3])], axis=0)
  return images, tf.constant([[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize('mix', [augment.mixup, augment.cutmix])
def test_mixed_labels_match_the_share_of_each_image(mix):
  images, labels = _two_images()
  for seed in range(5):
    mixed_images, mixed_labels = mix(images, labels, alpha=1.0, seed=tf.constant([seed, 0]))
    share_of_partner = tf.reduce_mean(mixed_images, axis=[1, 2, 3]).numpy()
    np.testing.assert_allclose(mixed_labels.numpy()[:, 1], share_of_partner, atol=1e-6)
    np.testing.assert_allclose(mixed_labels.numpy().sum(1), 1, rtol=1e-6)


def test_crops_keep_the_size_and_the_pixels():
  image = tf.reshape(tf.range(8 * 8 * 3, dtype=tf.float32), [8, 8, 3])
  seed = tf.constant([1, 2])
  cropped = augment.pad_and_crop(image, padding=2, seed=seed).numpy()
  assert cropped.shape == (8, 8, 3)
  # Every non-padding pixel is an original pixel.
  assert set(cropped[cropped.sum(-1) > 0, 0]) <= set(image.numpy()[..., 0].ravel())
  resized = augment.random_resized_crop(image, size=16, seed=seed)
  assert resized.shape == (16, 16, 3)
  np.testing.assert_array_equal(resized, augment.random_resized_crop(image, size=16, seed=seed))


def test_jpeg_crop_decodes_the_same_box_as_decodingfirst_batches():
  image = tf.cast(tf.random.stateless_uniform([40, 60, 3], seed=[0, 1], maxval=256, dtype=tf.int32),
                  tf.uint8)
  jpeg = tf.io.encode_jpeg(image)
  decoded = tf.cast(tf.io.decode_jpeg(jpeg), tf.float32)
  for seed in range(3):
    fast = augment.random_resized_crop_jpeg(jpeg, size=16, channels=3, seed=tf.constant([seed, 0]))
    slow = augment.random_resized_crop(decoded, size=16, seed=tf.constant([seed, 0]))
    assert fast.shape == slow.shape == (16, 16, 3)
    # Same box; only pixels at the box's edge may differ (chroma upsampling sees no neighbours).
    assert np.mean(np.abs(fast - slow) < 1e-3) > 0.85


def test_randaugment_is_stateless():
  randaugment = augment.make_randaugment(2, 15)
  image = tf.random.stateless_uniform([16, 16, 3], seed=[0, 0], maxval=255.0)
  outputs = [randaugment(image, tf.constant([seed, 0])).numpy() for seed in (1, 1, 2, 3, 4)]
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert sum(not np.array_equal(outputs[0], other) for other in outputs[2:]) >= 2
  assert all(0 <= out.min() and out.max() <= 255 for out in outputs)


@pytest.mark.parametrize('name,size,crop,num_classes,eval_split', [
    ('cifar10', 32, 'pad_and_crop', 10, 'test'),
    ('imagenet2012', 32, 'random_resized_crop', 1000, ''),
])
def test_real_datasets_under_mock_data(name, size, crop, num_classes, eval_split):
  config = get_base_config().dataset
  config.name, config.image_size, config.crop, config.flip = name, size, crop, True
  config.eval_split = eval_split
  config.mixup_alpha = 0.2
  with tfds.testing.mock_data(num_examples=20):
    datasets = _load(config, local_batch_size=4, num_eval_batches=3, process_index=1,
                     process_count=2)
    train = first_batches(datasets.train, 2)
    evals = first_batches(datasets.eval, 5)
  assert datasets.num_classes == num_classes
  for batch in train + evals:
    _assert_contract(batch, 4, size, num_classes)
  # 20 eval images in global batches of 8: process 1 holds rows 4-7 of each; batch 3 is padding.
  assert [b['weights'].sum() for b in evals] == [4, 4, 0]
  np.testing.assert_allclose(train[0]['labels'].sum(1), 1, rtol=1e-6)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_evaluates_on_validation_held_out_of_train_by_default(name):
  config = get_base_config().dataset
  config.name, config.image_size = name, 32
  # As many mock examples as the test above (the split's labels are read once per process).
  with tfds.testing.mock_data(num_examples=20):
    datasets = _load(config, local_batch_size=8, num_eval_batches=3)
    source = DATASETS.get(name)(config)
    labels = subsets.split_labels(source.builder, 'train')
    held_out = subsets.holdout_mask(labels, subsets.HOLDOUT)
    weights = np.concatenate([b['weights'] for b in first_batches(datasets.eval, 5)])
  assert datasets.eval_split == 'validation' and source.holdout == subsets.HOLDOUT
  assert 0 < held_out.sum() < 20 and weights.sum() == held_out.sum()
  assert datasets.info['num_train_labels'] == 20 - held_out.sum()


def test_a_missing_real_dataset_says_how_to_prepare_it(tmp_path):
  config = get_base_config().dataset
  config.name, config.data_dir = 'cifar10', str(tmp_path)
  with pytest.raises(FileNotFoundError, match='tfds build cifar10 --data_dir'):
    _load(config)


def test_tfdata_iterator_checkpoint_resumes_the_same_batches(data_dir, tmp_path):
  config = _digits_config(data_dir, crop='random_resized_crop', flip=True, mixup_alpha=0.4,
                          cutmix_alpha=1.0, randaugment_layers=1, loader='tfdata')
  assert_iterator_checkpoint_resumes(lambda: _load(config).train, tmp_path, skip=3, take=2)


def test_grain_state_is_a_batch_count_and_resumes_the_same_batches(data_dir):
  config = _digits_config(data_dir, crop='random_resized_crop', flip=True, mixup_alpha=0.4,
                          cutmix_alpha=1.0, randaugment_layers=1)
  iterator = iter(_load(config).train)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  assert state == {'next_index': 3}
  expected = [next(iterator) for _ in range(2)]
  resumed = iter(_load(config).train)
  resumed.set_state(state)
  assert_same_batches(expected, [next(resumed) for _ in range(2)])
  assert not np.array_equal(expected[0]['image'], first_batches(_load(config).train, 1)[0]['image'])


def test_grain_global_batches_do_not_depend_on_the_process_count(data_dir):
  config = _digits_config(data_dir, crop='random_resized_crop', flip=True)
  whole = first_batches(_load(config, local_batch_size=2 * BATCH).train, 3)
  halves = [first_batches(_load(config, process_index=p, process_count=2).train, 3)
            for p in (0, 1)]
  assert_halves_make_the_whole(whole, halves)


def test_grain_epochs_cover_the_split_in_a_new_order_each_time(data_dir):
  config = _digits_config(data_dir, image_size=8)
  raw_images, _ = digits_builder.load_images_and_labels()
  # 1348 train images per epoch (149 held out): the first 338 batches of 8 hold two epochs.
  batches = first_batches(_load(config).train, 338)
  order = [i for batch in batches for i in _digit_indices(batch, raw_images)]
  first, second = order[:1348], order[1348:2 * 1348]
  assert len(set(first)) == 1348 and set(second) == set(first)
  assert first[:100] != second[:100]


def test_grain_needs_array_record_and_says_how_to_add_it(tmp_path):
  builder = digits_builder.Digits(data_dir=str(tmp_path), file_format='tfrecord')
  prepare.prepare(builder)  # tfrecord only, as datasets prepared before array_record.
  source = vision.image_source(builder, train_split='train', eval_split='test',
                               stats={'mean': (0.5,) * 3, 'std': (0.5,) * 3})
  config = _digits_config(str(tmp_path))
  # The message reaches the user as it is (the trainer explains unprepared datasets otherwise).
  with pytest.raises(indexed.ArrayRecordMissingError,
                     match=r"stored as tfrecord only.*python -m jaxscale.data.add_array_record "
                           r".*loader=tfdata"), input_errors.explained(config):
    indexed_image_pipeline.train_batches(source, config, batch_size=BATCH, seed=0,
                                         process_index=0, process_count=1)


def test_eval_caches_encoded_images_not_decoded_ones(data_dir):
  eval_set = _load(_digits_config(data_dir)).eval
  graph = tf.compat.v1.GraphDef.FromString(eval_set._as_serialized_graph().numpy())
  caches = [node for node in graph.node if node.op.startswith('CacheDataset')]
  functions = [node for f in graph.library.function for node in f.node_def
               if node.op.startswith('CacheDataset')]
  assert len(caches + functions) == 1
  cached_types = caches[0].attr['output_types'].list.type if caches else functions[0].attr[
      'output_types'].list.type
  # (index, encoded image, label): no float32 tensor is cached.
  assert tf.string.as_datatype_enum in cached_types
  assert tf.float32.as_datatype_enum not in cached_types


@pytest.mark.parametrize('key,value,message', [
    ('crop', 'center', 'config.dataset.crop=.* choose one of: none, pad_and_crop'),
    ('mixup_alpha', -0.1, r'config.dataset.mixup_alpha=-0.1 must be >= 0'),
    ('randaugment_magnitude', 31, r'config.dataset.randaugment_magnitude=31 must be in \[0, 30\]'),
    ('image_size', 0, 'config.dataset.image_size=0 must be positive'),
    ('loader', 'torch', "config.dataset.loader='torch' is not allowed; choose one of: grain, tfdata"),
])
def test_config_validation_names_the_bad_dataset_key(key, value, message):
  config = tiny_config(**{f'dataset.{key}': value})
  with pytest.raises(validation.ConfigError, match=message):
    checks.validate(config)
