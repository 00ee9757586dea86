"""The input pipeline on the byte-level python_stdlib corpus: the contract the trainer relies on."""

import json
import re

from absl import app
import numpy as np
import pytest

from jaxscale.config.config_base import get_base_config
from jaxscale.data import (
    DATASETS, add_array_record, get_datasets, indexed, indexed_text_pipeline, prepare, text)
from jaxscale.data.builders import python_stdlib
from tests.helpers import assert_iterator_checkpoint_resumes, assert_same_batches, first_batches

SEQ_LEN = 64
BATCH = 8


@pytest.fixture(scope='module')
def stdlib_config(tmp_path_factory):
  config = get_base_config().dataset
  config.name, config.seq_len, config.shuffle_buffer_size = 'python_stdlib', SEQ_LEN, 256
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  return config


def _load(config, **overrides):
  kwargs = dict(local_batch_size=BATCH, num_eval_batches=4, seed=0) | overrides
  return get_datasets(config, **kwargs)


def test_registry_names_and_unknown_name():
  assert DATASETS.names() == ['c4', 'cifar10', 'cifar100', 'digits', 'glue/sst2', 'imagenet2012',
                              'imdb_reviews', 'lm1b', 'markov', 'python_stdlib', 'stdlib_packages']
  with pytest.raises(KeyError, match='choose one of: c4, cifar10, .*, python_stdlib'):
    DATASETS.get('wikitext')


def test_batches_have_the_contract_shapes_and_types(stdlib_config):
  datasets = _load(stdlib_config)
  assert datasets.vocab_size == 256 and datasets.bytes_per_token == 1.0
  assert datasets.min_loss is None
  assert datasets.info['num_train_examples'] > 1000
  for batch in first_batches(datasets.train, 3) + first_batches(datasets.eval, 1):
    assert set(batch) == {'inputs', 'targets', 'weights'}
    for key, dtype in [('inputs', np.int32), ('targets', np.int32), ('weights', np.float32)]:
      assert batch[key].shape == (BATCH, SEQ_LEN) and batch[key].dtype == dtype
    assert 0 <= batch['inputs'].min() and batch['inputs'].max() < 256
    # Targets are the inputs shifted by one inside each packed window.
    np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert (first_batches(datasets.train, 1)[0]['weights'] == 1).all()


def test_info_counts_the_train_tokens(stdlib_config):
  datasets = _load(stdlib_config)
  builder = python_stdlib.PythonStdlib(data_dir=stdlib_config.data_dir)
  texts = [example['text'] for example in builder.as_dataset(split='train').as_numpy_iterator()]
  assert datasets.info['num_train_bytes'] == sum(map(len, texts))
  assert datasets.info['num_train_tokens'] == sum(len(text) + 1 for text in texts)


def test_train_is_deterministic_for_a_seed(stdlib_config):
  first = first_batches(_load(stdlib_config).train, 3)
  assert_same_batches(first, first_batches(_load(stdlib_config).train, 3))
  other_seed = first_batches(_load(stdlib_config, seed=1).train, 3)
  assert not np.array_equal(first[0]['inputs'], other_seed[0]['inputs'])


def test_eval_is_the_validation_stream_in_order_whatever_the_seed(stdlib_config):
  datasets = _load(stdlib_config, seed=7)
  batches = list(datasets.eval.as_numpy_iterator())
  assert len(batches) == 4
  assert_same_batches(batches, list(datasets.eval.as_numpy_iterator()))  # Again, same object.
  # The reference: the validation split's token sequences in file order, packed end to end.
  source = DATASETS.get('python_stdlib')(stdlib_config)
  examples = source.builder.as_dataset(split='validation', shuffle_files=False)
  stream, needed = [], 4 * BATCH * (SEQ_LEN + 1)
  for example in examples:
    stream.extend(np.asarray(source.to_tokens(example)).tolist())
    if len(stream) >= needed:
      break
  expected_windows = np.reshape(stream[:needed], (4 * BATCH, SEQ_LEN + 1))
  windows = np.concatenate([np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1)
                            for b in batches])
  np.testing.assert_array_equal(windows, expected_windows)


def test_eval_rows_split_across_processes_make_the_single_process_set(stdlib_config):
  whole = list(_load(stdlib_config).eval.as_numpy_iterator())
  halves = [list(_load(stdlib_config, local_batch_size=BATCH // 2, process_index=index,
                       process_count=2).eval.as_numpy_iterator()) for index in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]]))


def test_train_shards_differ_across_processes(stdlib_config):
  """Each process reads its own files: what it sees is disjoint from the other's documents."""
  rows = []
  for index in range(2):
    datasets = _load(stdlib_config, process_index=index, process_count=2)
    rows.append({bytes(row.astype(np.uint8))
                 for batch in first_batches(datasets.train, 20) for row in batch['inputs']})
  assert len(rows[0]) == len(rows[1]) == 20 * BATCH
  assert not rows[0] & rows[1]


def test_eval_packs_real_validation_files_back_to_back(stdlib_config):
  """Unshuffled eval windows, laid end to end, are the validation files separated by NUL."""
  datasets = _load(stdlib_config, num_eval_batches=64)
  stream = b''.join(bytes(np.append(inputs, targets[-1]).astype(np.uint8))
                    for batch in datasets.eval.as_numpy_iterator()
                    for inputs, targets in zip(batch['inputs'], batch['targets']))
  assert len(stream) == 64 * BATCH * (SEQ_LEN + 1)
  root = python_stdlib.stdlib_root()
  validation_files = {(root / path).read_bytes(): path
                      for path in map(lambda p: p.relative_to(root).as_posix(),
                                      python_stdlib.source_files(root))
                      if python_stdlib.is_validation(path)}
  *complete_documents, last_piece = stream.split(b'\0')
  assert len(complete_documents) >= 2
  for document in complete_documents:
    assert document in validation_files
  assert any(text.startswith(last_piece) for text in validation_files)
  source = next(document for document in complete_documents if b'def ' in document)
  compile(source, validation_files[source], 'exec')  # Real Python source.


def test_tfdata_train_iterator_resumes_exactly_from_a_checkpoint(stdlib_config, tmp_path):
  config = stdlib_config.copy_and_resolve_references()
  config.loader = 'tfdata'
  assert_iterator_checkpoint_resumes(lambda: _load(config).train, tmp_path, skip=5, take=3)


def _grain_config(stdlib_config, shuffle_buffer_size):
  config = stdlib_config.copy_and_resolve_references()
  config.loader, config.shuffle_buffer_size = 'grain', shuffle_buffer_size
  return config


@pytest.mark.parametrize('shuffle_buffer_size', [1, 64])
def test_grain_train_state_is_small_json_and_resumes_exactly(stdlib_config, shuffle_buffer_size):
  """Saved as checkpoints save it (JSON, Grain's handler), at the start of the stream (no
  remainder document: JSON turns its empty slices into lists) and inside windows and groups."""
  train = _load(_grain_config(stdlib_config, shuffle_buffer_size)).train
  for skip in [0, 3, 8, 9, 70]:
    iterator = iter(train)
    for _ in range(skip):
      next(iterator)
    saved = json.dumps(iterator.get_state())
    assert len(saved) < 400  # A few integers, however large the shuffle group.
    expected = [next(iterator) for _ in range(10)]
    resumed = iter(_load(_grain_config(stdlib_config, shuffle_buffer_size)).train)
    resumed.set_state(json.loads(saved))
    assert_same_batches(expected, [next(resumed) for _ in range(10)])


def test_grain_state_does_not_grow_with_the_shuffle_group(stdlib_config):
  sizes = []
  for shuffle_buffer_size in [16, 1024]:
    iterator = iter(_load(_grain_config(stdlib_config, shuffle_buffer_size)).train)
    next(iterator)
    sizes.append(len(json.dumps(iterator.get_state())))
  assert sizes[1] <= sizes[0] + 4  # Only the digits of its counters differ.


def test_grain_windows_are_whole_documents_end_to_end(stdlib_config):
  """Unshuffled windows, laid end to end, are train files separated by NUL: nothing dropped or
  repeated at window or document boundaries, each document read once in an epoch."""
  train = _load(_grain_config(stdlib_config, 1)).train
  stream = b''.join(bytes(np.append(inputs, targets[-1]).astype(np.uint8))
                    for batch in first_batches(train, 1500)
                    for inputs, targets in zip(batch['inputs'], batch['targets']))
  root = python_stdlib.stdlib_root()
  train_files = {(root / path).read_bytes()
                 for path in map(lambda p: p.relative_to(root).as_posix(),
                                 python_stdlib.source_files(root))
                 if not python_stdlib.is_validation(path)}
  # The stream starts at a document's start; only the last piece is cut off.
  *complete_documents, last_piece = stream.split(b'\0')
  assert len(complete_documents) >= 2
  assert all(document in train_files for document in complete_documents)
  assert len(set(complete_documents)) == len(complete_documents)
  assert any(document.startswith(last_piece) for document in train_files)


def test_grain_needs_array_record_and_the_command_adds_it(tmp_path):
  builder = python_stdlib.PythonStdlib(data_dir=str(tmp_path), file_format='tfrecord')
  prepare.prepare(builder)  # tfrecord only, as datasets prepared without array_record.
  source = text.text_source(builder, train_split='train', eval_split='validation',
                            dataset_config=get_base_config().dataset)
  config = get_base_config().dataset
  config.seq_len = SEQ_LEN
  with pytest.raises(indexed.ArrayRecordMissingError,
                     match=r'stored as tfrecord only.*python -m jaxscale.data.add_array_record '
                           + re.escape(builder.data_dir) + r'.*loader=tfdata'):
    indexed_text_pipeline.train_batches(source, config, batch_size=BATCH, seed=0,
                                        process_index=0, process_count=1)
  with pytest.raises(app.UsageError, match='holds no dataset_info.json'):
    add_array_record.main(['add_array_record', str(tmp_path / 'python_stdlib')])
  add_array_record.main(['add_array_record', builder.data_dir])
  builder = prepare.prepare(  # As the next run would find it.
      python_stdlib.PythonStdlib(data_dir=str(tmp_path), file_format='tfrecord'))
  source = text.text_source(builder, train_split='train', eval_split='validation',
                            dataset_config=get_base_config().dataset)
  batches = first_batches(indexed_text_pipeline.train_batches(
      source, config, batch_size=BATCH, seed=0, process_index=0, process_count=1), 2)
  assert batches[1]['inputs'].shape == (BATCH, SEQ_LEN)
  # tf.data still reads the tfrecord files, unchanged by the added format.
  assert builder.info.file_format.value == 'tfrecord'
  assert next(iter(builder.as_dataset(split='validation')))['text'].numpy()
