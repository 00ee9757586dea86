"""Hugging Face tokenizer files, checked against the real `transformers.AutoTokenizer`: a run's
tokenizer written out (byte-level with its special ids, SentencePiece unigram and BPE) encodes
text to exactly the run's ids and decodes it back; an HF tokenizer directory (`hf:DIR`)
tokenizes a text dataset, trains, and goes out again with the run; importing a checkpoint's
tokenizer; mismatched vocabularies refused in one line."""

import argparse
import glob
import io
import json
import sysconfig

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
import tokenizers
import transformers

from jaxscale.config import workdir as workdir_lib
from jaxscale.config.config_base import get_base_config
from jaxscale.config.validation import ConfigError
from jaxscale.data import hf_tokenizer, tokenizers as data_tokenizers
from jaxscale.inference import backends, sampling
from jaxscale.train import checks, loop
from tests.helpers import tiny_config

# Real text: standard-library sources (as python_stdlib holds them), then what they lack:
# non-ASCII scripts, emoji, runs of spaces, and text that spells special tokens or byte pieces.
STDLIB_FILES = sorted(glob.glob(sysconfig.get_paths()['stdlib'] + '/*.py'))[:60]
EXTRA_TEXTS = [
    'héllo wörld — ünïcode ✓ 日本語 😀', '  leading and  double  spaces  ', '\n\n\tx\n', '',
    ' ', '<s> </s> <unk> <0x41> <pad> <cls> <mask> ▁x', 'Ā \x00 end', 'a\u00a0b ﬁ ① ＜s＞',
    '▁▁a', 'x<y>z</w>']


def _texts():
  texts = []
  for path in STDLIB_FILES:
    with open(path, encoding='utf-8', errors='replace') as source:
      texts.append(source.read())
  return texts + EXTRA_TEXTS


def _auto(directory):
  return transformers.AutoTokenizer.from_pretrained(str(directory))


def _run_config(tokenizer, vocab_size, **dataset):
  config = get_base_config()
  config.dataset.tokenizer, config.model.vocab_size, config.dataset.seq_len = (
      tokenizer, vocab_size, 32)
  config.dataset.update(dataset)
  return config


def test_byte_level_run_encodes_exactly_with_its_special_ids(tmp_path):
  assert hf_tokenizer.write_tokenizer_files(_run_config('byte', 259), tmp_path) == 'byte'
  auto = _auto(tmp_path)
  # The document separator is EOS; MLM's and classifiers' PAD, CLS and MASK follow the bytes.
  assert (auto.eos_token_id, auto.pad_token_id, auto.cls_token_id, auto.mask_token_id) == (
      0, 256, 257, 258)
  assert auto.bos_token_id is None and len(auto) == 259 and auto.model_max_length == 32
  for text in _texts():
    ids = auto.encode(text)
    assert ids == sampling.encode_bytes(text).tolist(), text[:60]
    assert auto.decode(ids) == text
  assert auto.encode('<mask>') == list(b'<mask>')  # Text that spells a special is text.
  # Bytes that are not UTF-8 decode as the run decodes them.
  rng = np.random.default_rng(0)
  for _ in range(20):
    ids = rng.integers(1, 256, 12).tolist()
    assert auto.decode(ids) == sampling.decode_bytes(ids)
  padded = auto(['ab', 'abcd'], padding=True)
  assert padded['input_ids'] == [[97, 98, 256, 256], [97, 98, 99, 100]]
  # A plain byte LM (vocabulary 256) has no room for the specials: none are written.
  hf_tokenizer.write_tokenizer_files(_run_config('byte', 256), tmp_path / 'lm')
  plain = _auto(tmp_path / 'lm')
  assert len(plain) == 256 and plain.pad_token_id is None and plain.eos_token_id == 0


@pytest.fixture(scope='module', params=['unigram', 'bpe'])
def spm_model_path(request, tmp_path_factory):
  with open(argparse.__file__, encoding='utf-8') as source:
    lines = source.read().splitlines()
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=400, byte_fallback=True,
      model_type=request.param, minloglevel=2)
  path = tmp_path_factory.mktemp('spm') / f'{request.param}.model'
  path.write_bytes(model.getvalue())
  return str(path)


def test_sentencepiece_run_encodes_exactly(spm_model_path, tmp_path):
  config = _run_config('sentencepiece', 403, spm_model_path=spm_model_path)
  assert hf_tokenizer.write_tokenizer_files(config, tmp_path) == 'sentencepiece'
  processor = sentencepiece.SentencePieceProcessor(model_file=spm_model_path)
  auto = _auto(tmp_path)
  assert (auto.eos_token_id, auto.unk_token_id) == (processor.eos_id(), processor.unk_id())
  assert (auto.pad_token_id, auto.cls_token_id, auto.mask_token_id) == (400, 401, 402)
  for text in _texts():
    ids = auto.encode(text)
    assert ids == processor.encode(text), text[:60]
    assert auto.decode(ids) == processor.decode(ids)


def _hf_directory(tmp_path):
  """A tokenizer as transformers saves one: a byte-level BPE trained here, whose `encode` adds a
  BOS (as Llama's does), with EOS and PAD."""
  backend = tokenizers.Tokenizer(tokenizers.models.BPE())
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<s>', '</s>', '<pad>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  with open(argparse.__file__, encoding='utf-8') as source:
    backend.train_from_iterator(source.read().splitlines(), trainer)
  backend.post_processor = tokenizers.processors.TemplateProcessing(
      single='<s> $A', special_tokens=[('<s>', backend.token_to_id('<s>'))])
  saved = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token='<s>', eos_token='</s>', pad_token='<pad>')
  directory = tmp_path / 'hf_tokenizer'
  saved.save_pretrained(str(directory))
  return directory


def test_hf_directory_tokenizes_as_auto_tokenizer_does(tmp_path):
  directory = _hf_directory(tmp_path)
  auto = _auto(directory)
  tokenizer = data_tokenizers.make_tokenizer(f'hf:{directory}')
  assert tokenizer.vocab_size == len(auto) == 300
  for text in _texts()[:10] + EXTRA_TEXTS:
    ids = tokenizer.tokenize_document(tf.constant(text.encode('utf-8'))).numpy().tolist()
    # AutoTokenizer's encode (its BOS included), then EOS as the document separator.
    assert ids == auto.encode(text) + [auto.eos_token_id], text[:60]
  assert 1 < tokenizer.token_bytes.mean() < 10 and tokenizer.token_bytes[auto.bos_token_id] == 0


def test_text_that_is_not_utf8_tokenizes_as_its_replacement_decoding(tmp_path):
  """A document with bytes that are not UTF-8 (python_stdlib has some) is tokenized as
  bytes.decode(errors='replace') reads it, by both Python-side tokenizers, not a crash."""
  document = 'caf\u00e9 = 1\n'.encode('utf-8')[:4] + b'\xf0(\xff = 2\n'
  with pytest.raises(UnicodeDecodeError):
    document.decode('utf-8')
  text = document.decode('utf-8', errors='replace')
  directory = _hf_directory(tmp_path)
  auto = _auto(directory)
  ids = data_tokenizers.make_tokenizer(f'hf:{directory}').tokenize_document(tf.constant(document))
  assert ids.numpy().tolist() == auto.encode(text) + [auto.eos_token_id]
  assert auto.decode(auto.encode(text), skip_special_tokens=True) == text


def test_sentencepiece_text_that_is_not_utf8_tokenizes_as_its_replacement_decoding(
    spm_model_path):
  document = b'x = 1\n\xf0(\xff = 2\n'
  processor = sentencepiece.SentencePieceProcessor(model_file=spm_model_path)
  tokenizer = data_tokenizers.sentencepiece_tokenizer(spm_model_path, backend='sentencepiece')
  ids = tokenizer.tokenize_document(tf.constant(document)).numpy().tolist()
  assert ids == processor.encode(document.decode('utf-8', errors='replace')) + [processor.eos_id()]


def test_hf_tokenizer_trains_serves_and_goes_out_with_the_run(tmp_path, data_dir):
  directory = _hf_directory(tmp_path)
  config = tiny_config(**{
      'dataset.name': 'python_stdlib', 'dataset.data_dir': str(data_dir),
      'dataset.tokenizer': f'hf:{directory}', 'model.vocab_size': 0, 'num_train_steps': 4,
      'eval_every_steps': 4, 'checkpoint_every_steps': 4, 'log_every_steps': 2,
      'num_eval_batches': 1})
  workdir = tmp_path / 'run'
  summary = loop.run(config, str(workdir))
  assert np.isfinite(summary['eval_loss'])
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['model']['vocab_size'] == 300
  # Out with the run: the same files, so AutoTokenizer encodes as the run did.
  out = tmp_path / 'out'
  assert hf_tokenizer.write_tokenizer_files(workdir_lib.read_config(workdir), out) == 'hf'
  text = 'def parse_args(self, args=None):'
  assert _auto(out).encode(text) == _auto(directory).encode(text)
  # Served: text prompts are encoded, and the new tokens decoded, by the tokenizer.
  backend = backends.from_workdir(workdir, max_prompt_tokens=64, max_new_tokens=8)
  request = {'prompt': text, 'max_new_tokens': 4, 'temperature': 0.0, 'top_k': None,
             'top_p': None, 'seed': 0}
  checked = backend.check(request)
  assert checked['tokens'].tolist() == _auto(directory).encode(text)
  (result,) = backend.run([checked])
  assert result['text'] == _auto(directory).decode(result['tokens'])
  assert backend.stop_tokens == (_auto(directory).eos_token_id,)


def test_a_tokenizer_the_vocabulary_lacks_is_refused_naming_the_file(tmp_path):
  directory = _hf_directory(tmp_path)
  config = tiny_config(**{'dataset.tokenizer': f'hf:{directory}', 'model.vocab_size': 256})
  with pytest.raises(ConfigError, match=r'tokenizer\.json has 300 token ids but '
                     r'config\.model\.vocab_size=256'):
    checks.validate(config)
  config.model.vocab_size = 320  # A model may have more rows than the tokenizer has ids.
  checks.validate(config)
  with pytest.raises(ConfigError, match='config.dataset.tokenizer has 256 token ids but '
                     r'config\.model\.vocab_size=200'):
    hf_tokenizer.write_tokenizer_files(_run_config('byte', 200), tmp_path / 'out')
  assert not (tmp_path / 'out').exists()
  with pytest.raises(ConfigError, match=r'hf_tokenizer.+tokenizer\.json not found'):
    checks.validate(tiny_config(**{'dataset.tokenizer': f'hf:{directory}_missing'}))


def test_import_names_the_tokenizer_or_says_none_came(tmp_path):
  checkpoint = tmp_path / 'checkpoint'
  checkpoint.mkdir()
  (checkpoint / 'config.json').write_text(json.dumps(
      {'vocab_size': 320, 'max_position_embeddings': 128}))
  assert hf_tokenizer.import_keys(checkpoint) == {
      'dataset.tokenizer': hf_tokenizer.NO_TOKENIZER, 'export.max_seq_len': 128}
  # Without a tokenizer there is no text to train on, and nothing to write out.
  none = tiny_config(**{'dataset.name': 'python_stdlib', 'dataset.tokenizer': 'none'})
  with pytest.raises(ConfigError, match="tokenizer='none'.+hf:DIR"):
    data_tokenizers.make_tokenizer(none.dataset.tokenizer)
  assert hf_tokenizer.write_tokenizer_files(none, tmp_path / 'nothing') is None
  assert not (tmp_path / 'nothing').exists()

  saved = _hf_directory(tmp_path)
  for path in saved.iterdir():
    (checkpoint / path.name).write_bytes(path.read_bytes())
  keys = hf_tokenizer.import_keys(checkpoint, copy_to=tmp_path / 'workdir' / 'tokenizer')
  assert keys == {'dataset.tokenizer': f'hf:{tmp_path / "workdir" / "tokenizer"}',
                  'export.max_seq_len': 128}
  text = 'return namespace'
  assert (hf_tokenizer.load(tmp_path / 'workdir' / 'tokenizer').encode(text)
          == _auto(checkpoint).encode(text))
  (checkpoint / 'config.json').write_text(json.dumps({'vocab_size': 200}))
  with pytest.raises(ConfigError, match=r'tokenizer\.json has 300 token ids but .+config\.json '
                     'has vocab_size=200'):
    hf_tokenizer.import_keys(checkpoint)
