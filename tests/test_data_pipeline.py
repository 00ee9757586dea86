"""The input pipeline on the byte-level python_stdlib corpus: the contract the trainer relies on."""

import json
import re

from absl import app
import numpy as np
import pytest

from jaxscale.config.config_base import get_base_config
from jaxscale.data import (
    DATASETS, add_array_record, eval_windows, get_datasets, indexed, indexed_text_pipeline, prepare,
    text)
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


def _global_windows(datasets):
  return np.concatenate([np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1)
                         for b in datasets.eval.as_numpy_iterator()])


def test_eval_is_the_same_fixed_set_whatever_the_seed(stdlib_config):
  datasets = _load(stdlib_config, seed=7)
  batches = list(datasets.eval.as_numpy_iterator())
  assert len(batches) == 4
  assert_same_batches(batches, list(datasets.eval.as_numpy_iterator()))  # Again, same object.
  assert_same_batches(batches, list(_load(stdlib_config, seed=0).eval.as_numpy_iterator()))
  np.testing.assert_array_equal(datasets.eval_document_ids,
                                _load(stdlib_config, seed=0).eval_document_ids)


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


def _validation_documents(config):
  source = DATASETS.get('python_stdlib')(config)
  examples = source.builder.as_dataset(split='validation', shuffle_files=False)
  return [np.asarray(source.to_tokens(example)) for example in examples]


def test_eval_draws_real_windows_from_every_validation_document(stdlib_config):
  """At the default config's size (seq_len 256, 8 batches of 16) the set holds a window of every
  validation file with a target; each window is a piece of its own file (a short file: all of
  it, then padding of weight 0), never a join of two."""
  config = stdlib_config.copy_and_resolve_references()
  config.seq_len = 256
  datasets = get_datasets(config, local_batch_size=16, num_eval_batches=8, seed=0)
  documents = _validation_documents(config)
  with_target = {index for index, tokens in enumerate(documents) if len(tokens) >= 2}
  assert len(with_target) > 80
  ids = datasets.eval_document_ids
  assert set(ids.tolist()) == with_target
  batches = list(datasets.eval.as_numpy_iterator())
  windows = _global_windows(datasets)
  weights = np.concatenate([b['weights'] for b in batches])
  for window, weight, index in zip(windows, weights, ids):
    tokens, targets = documents[index], int(weight.sum())
    piece = window[:targets + 1]
    assert any(np.array_equal(tokens[start:start + len(piece)], piece)
               for start in range(len(tokens) - len(piece) + 1))
    assert (weight[:targets] == 1).all() and (weight[targets:] == 0).all()
    assert targets == 256 or targets == len(tokens) - 1  # Full, or a whole short file.
  # Long files get more windows than short ones.
  lengths = np.array([len(documents[i]) for i in ids])
  counts = np.bincount(ids)[ids]
  assert np.corrcoef(lengths, counts)[0, 1] > 0.5
  assert datasets.bytes_per_token == 1.0


def test_eval_windows_share_out_the_set_by_length():
  documents = [np.arange(n, dtype=np.int32) for n in (5, 40, 400, 2000, 1)]
  windows = eval_windows.sample_windows(documents, seq_len=9, num_windows=64)
  ids = windows.document_ids
  # One token has no target; the others get one each, the rest by length, never more than fit.
  assert windows.num_documents == 4 and -1 not in ids and 4 not in ids
  counts = np.bincount(ids, minlength=5)
  assert counts[0] == 1 and counts[1] == 1 and 1 < counts[2] < counts[3] <= 200
  assert counts.sum() == 64
  np.testing.assert_array_equal(windows.weights[ids == 0].sum(1), [4])
  # Fewer windows than the documents hold: padding of weight 0 and document -1 at the end.
  small = eval_windows.sample_windows(documents[:2], seq_len=9, num_windows=8)
  np.testing.assert_array_equal(small.document_ids, [0, 1, 1, 1, 1, -1, -1, -1])
  assert small.weights[5:].sum() == 0


def test_eval_set_samples_documents_of_a_large_split():
  documents = [np.full(30, i, np.int32) for i in range(50)]
  windows = eval_windows.sample_windows(documents, seq_len=9, num_windows=20)
  assert windows.num_documents == 20 and len(set(windows.document_ids.tolist())) == 20
  # Each window holds its document's tokens.
  np.testing.assert_array_equal(windows.windows[:, 0], windows.document_ids)


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
