"""Real text datasets (lm1b, c4) through their TFDS builders, mocked; SentencePiece tokenization."""

import io
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.checkpoint import checkpointing
from jaxscale.config.config_base import get_base_config
from jaxscale.data import get_datasets, tokenizers
from tests.helpers import tiny_config

SEQ_LEN = 32
BATCH = 4
NUM_MOCK_EXAMPLES = 40


def _config(name, data_dir, **values):
  config = get_base_config().dataset
  config.name, config.seq_len, config.data_dir = name, SEQ_LEN, str(data_dir)
  config.update(values)
  return config


def _mock_documents(name, split, data_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  return [example['text'] for example in builder.as_dataset(split=split).as_numpy_iterator()]


@pytest.mark.parametrize('name, builder_name, eval_split', [
    ('lm1b', 'lm1b', 'test'),
    ('c4', 'c4/en', 'validation'),
])
def test_mocked_real_dataset_packs_byte_tokens(name, builder_name, eval_split, tmp_path):
  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
    datasets = get_datasets(_config(name, tmp_path), local_batch_size=BATCH, num_eval_batches=12,
                            seed=0)
    train = list(itertools.islice(datasets.train.as_numpy_iterator(), 5))
    evaluation = list(datasets.eval.as_numpy_iterator())
    documents = _mock_documents(builder_name, eval_split, tmp_path)
  assert datasets.vocab_size == 256 and datasets.bytes_per_token == 1.0
  # Mock text is made of ' abcdefghij'; byte 0 separates documents of 10 to 19 characters.
  allowed = {0} | set(b' abcdefghij')
  for batch in train + evaluation:
    for key, dtype in [('inputs', np.int32), ('targets', np.int32), ('weights', np.float32)]:
      assert batch[key].shape == (BATCH, SEQ_LEN) and batch[key].dtype == dtype
    assert set(np.unique(batch['inputs'])) <= allowed
    np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  for batch in train:
    assert (batch['weights'] == 1).all()
    assert ((batch['inputs'] == 0).sum(axis=1) >= 1).all()  # A separator at least every 20 bytes.
  # Every mock document (shorter than a window) is one eval window: the document and its
  # separator, then padding of weight 0; windows past the documents are all padding.
  rows = [(inputs, targets, weights) for batch in evaluation
          for inputs, targets, weights in zip(batch['inputs'], batch['targets'], batch['weights'])]
  assert len(rows) == 12 * BATCH and len(documents) == NUM_MOCK_EXAMPLES < 12 * BATCH
  np.testing.assert_array_equal(datasets.eval_document_ids[:len(documents)],
                                np.arange(len(documents)))
  for index, (inputs, targets, weights) in enumerate(rows):
    if index < len(documents):
      window = documents[index] + b'\0'
      assert bytes(np.append(inputs, targets[-1])[:len(window)].astype(np.uint8)) == window
      np.testing.assert_array_equal(weights, np.arange(SEQ_LEN) < len(window) - 1)
    else:
      assert (weights == 0).all() and not inputs.any()


# ---- SentencePiece ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def spm_model_path(tmp_path_factory):
  import sentencepiece  # pylint: disable=import-outside-toplevel  (the test extra installs it)
  import argparse  # pylint: disable=import-outside-toplevel
  with open(argparse.__file__, encoding='utf-8') as source:
    lines = source.read().splitlines()
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=400, byte_fallback=True)
  path = tmp_path_factory.mktemp('spm') / 'tiny.model'
  path.write_bytes(model.getvalue())
  return str(path)


def test_sentencepiece_tokens_decode_to_the_documents(spm_model_path, tmp_path):
  import sentencepiece  # pylint: disable=import-outside-toplevel
  processor = sentencepiece.SentencePieceProcessor(model_file=spm_model_path)
  config = _config('lm1b', tmp_path, tokenizer='sentencepiece', spm_model_path=spm_model_path)
  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
    datasets = get_datasets(config, local_batch_size=BATCH, num_eval_batches=2, seed=0)
    evaluation = list(datasets.eval.as_numpy_iterator())
    documents = _mock_documents('lm1b', 'test', tmp_path)
    second_of_two = get_datasets(config, local_batch_size=BATCH // 2, num_eval_batches=2, seed=0,
                                 process_index=1, process_count=2)
  assert datasets.vocab_size == 400
  eos = processor.eos_id()
  encoded = [processor.encode(document.decode()) + [eos] for document in documents]
  # Every eval row is a stretch of one document's tokens (the EOS after it included).
  rows = 0
  for batch in evaluation:
    for inputs, targets, weights in zip(batch['inputs'], batch['targets'], batch['weights']):
      real = int(weights.sum())
      if real:
        window = [int(t) for t in (list(inputs) + [targets[-1]])[:real + 1]]
        assert any(_holds(tokens, window) for tokens in encoded), window
        rows += 1
  assert rows > BATCH
  # Bytes per token of the eval targets: each document is its bytes + 1 separator, as in bytes;
  # the eval set samples the documents in proportion to their length.
  exact = (sum(len(d) + 1 for d in documents) / sum(len(tokens) for tokens in encoded))
  assert datasets.bytes_per_token == pytest.approx(exact, rel=0.1)
  assert second_of_two.bytes_per_token == datasets.bytes_per_token  # Over the whole eval set.


def _holds(tokens: list, window: list) -> bool:
  """Whether `window` is a contiguous stretch of `tokens`."""
  return any(tokens[i:i + len(window)] == window for i in range(len(tokens) - len(window) + 1))


class _CharacterOp:
  """A SentencePiece-model tokenizer made of TensorFlow ops with tensorflow_text's interface:
  each character is looked up among the model's pieces (unknown ones map to <unk>), EOS
  appended. Not SentencePiece's segmentation, but the same kind of graph op, so the path that
  runs tensorflow-text's op (installed with --no-deps only, so not in the test extra) runs
  here for real: tf.data must save the iterator itself."""

  def __init__(self, model: bytes):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    self.pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    self.eos = processor.eos_id()
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(self.pieces),
                                            tf.range(len(self.pieces), dtype=tf.int32)),
        default_value=processor.unk_id())

  def tokenize(self, text):
    ids = self.table.lookup(tf.strings.unicode_split(text, 'UTF-8'))
    return tf.concat([ids, [self.eos]], axis=0)

  def vocab_size(self):
    return len(self.pieces)

  def id_to_string(self, ids):
    return tf.gather(tf.constant(self.pieces), ids)


@pytest.mark.parametrize('backend, loader', [('sentencepiece', 'tfdata'),
                                             ('tensorflow_text', 'tfdata'),
                                             ('sentencepiece', 'grain')])
def test_sentencepiece_train_iterator_resumes_exactly(spm_model_path, tmp_path, backend, loader,
                                                     monkeypatch):
  """Real (unmocked) data through a checkpoint. tf.data: a TF op (tensorflow-text's, here
  `_CharacterOp` in its place) saves the iterator itself; the sentencepiece package (a
  numpy_function) resumes by replaying the stream. Grain saves its position whatever the
  tokenizer."""
  ops = []
  monkeypatch.setattr(tokenizers, '_installed', lambda module: backend == 'tensorflow_text')
  monkeypatch.setattr(tokenizers, '_tensorflow_text_tokenizer', lambda model, path: (
      ops.append(_CharacterOp(model)) or tokenizers._op_tokenizer(ops[-1], path)))
  config = _config('python_stdlib', tmp_path / 'tfds', tokenizer='sentencepiece',
                   spm_model_path=spm_model_path)
  config.loader = loader
  make = lambda: iter(get_datasets(config, local_batch_size=BATCH, num_eval_batches=1,
                                   seed=0).train)
  iterator = make()
  next(iterator)
  manager = checkpointing.make_manager(tmp_path / 'run', tiny_config())
  checkpointing.save(manager, 1, {'x': np.zeros(1)}, iterator, force=True)
  manager.wait_until_finished()
  replayed = (tmp_path / 'run' / 'checkpoints' / '1' / 'data').glob('*' + checkpointing.REPLAY_SUFFIX)
  assert bool(list(replayed)) == (backend == 'sentencepiece' and loader == 'tfdata')
  expected = np.asarray(next(iterator)['inputs'])
  resumed = make()
  checkpointing.restore(manager, 1, {'x': np.zeros(1)}, resumed)
  np.testing.assert_array_equal(np.asarray(next(resumed)['inputs']), expected)
  assert expected.max() < 400
  assert bool(ops) == (backend == 'tensorflow_text')  # 'auto' took the TF op where installed.
