"""A byte-level BPE trained on a dataset's train split (`jaxscale.data.train_tokenizer`): read by
the real `transformers.AutoTokenizer` as the pipeline reads it, lossless on any text, trained on
train only, the same for the same split and size; bad input refused in one line."""

import json
import subprocess
import sys

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import transformers

from jaxscale.config.config_base import get_base_config
from jaxscale.config.validation import ConfigError
from jaxscale.data import hf_tokenizer, sources, tokenizers as data_tokenizers, train_tokenizer
from tests.helpers import CONFIG_DIR

ROOT = CONFIG_DIR.parent


def _dataset_config(data_dir, name='python_stdlib'):
  config = get_base_config().dataset
  config.update(name=name, data_dir=str(data_dir))
  return config


def _validation_texts(data_dir, count=20):
  source = sources.DATASETS.get('python_stdlib')(_dataset_config(data_dir))
  examples = source.builder.as_dataset(split='validation', shuffle_files=False).take(count)
  return [data_tokenizers.as_text(e['text']) for e in tfds.as_numpy(examples)]


def test_stdlib_bpe_encodes_as_auto_tokenizer_does_and_decodes_losslessly(stdlib_bpe, data_dir):
  auto = transformers.AutoTokenizer.from_pretrained(str(stdlib_bpe))
  tokenizer = data_tokenizers.make_tokenizer(f'hf:{stdlib_bpe}')
  assert tokenizer.vocab_size == len(auto) == 4096
  assert auto.eos_token == train_tokenizer.EOS_TOKEN and auto.eos_token_id == 4095
  texts = _validation_texts(data_dir)  # Files the tokenizer never saw.
  num_bytes = num_tokens = 0
  for text in texts + ['héllo wörld — ✓ 日本語 😀', '\t  x\n\n', '<|endoftext|> as text']:
    ids = tokenizer.tokenize_document(tf.constant(text.encode('utf-8'))).numpy().tolist()
    assert ids == auto.encode(text) + [auto.eos_token_id], text[:60]
    assert auto.decode(ids[:-1]) == text  # Byte-level: no unknown token, nothing normalised.
    num_bytes, num_tokens = num_bytes + len(text.encode('utf-8')), num_tokens + len(ids) - 1
  # Merges learned from the corpus: far fewer tokens than bytes (the byte tokenizer's 1.0).
  assert num_bytes / num_tokens > 2.5
  assert tokenizer.token_bytes[auto.eos_token_id] == 0


def test_training_reads_the_train_split_only_and_is_deterministic(data_dir, tmp_path):
  config = _dataset_config(data_dir)
  source = sources.DATASETS.get('python_stdlib')(config)
  documents = list(train_tokenizer.train_documents(config))
  assert len(documents) == source.builder.info.splits['train'].num_examples
  # Exactly train's files: the split's recorded size in bytes (up to the few bytes that are not
  # UTF-8, each read as the 3-byte U+FFFD).
  num_bytes = sum(len(d.encode('utf-8')) for d in documents)
  assert num_bytes == pytest.approx(source.builder.info.metadata['num_bytes']['train'], rel=1e-3)
  first = train_tokenizer.train_bpe(iter(documents), 300, tmp_path / 'a')
  second = train_tokenizer.train_bpe(iter(documents), 300, tmp_path / 'b')
  for name in hf_tokenizer.FILES:
    assert (first / name).read_bytes() == (second / name).read_bytes(), name
  assert hf_tokenizer.load(first).vocab_size == 300


def test_command_line_writes_a_tokenizer_runs_can_use(data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxscale.data.train_tokenizer', '--vocab_size=300',
       f'--out={tmp_path / "bpe"}', f'--data_dir={data_dir}'],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report == {'out': str(tmp_path / 'bpe'), 'vocab_size': 300, 'eos_id': 299,
                    'dataset': 'python_stdlib'}
  assert data_tokenizers.make_tokenizer(f'hf:{tmp_path / "bpe"}').vocab_size == 300


def test_bad_input_is_refused_saying_what_to_do(data_dir, tmp_path):
  with pytest.raises(ConfigError, match="no 'text' feature.*choose a text dataset"):
    next(train_tokenizer.train_documents(_dataset_config(data_dir, name='digits')))
  with pytest.raises(ConfigError, match='vocab_size=100: a byte-level BPE needs at least 257'):
    train_tokenizer.train_bpe(iter(['x = 1']), 100, tmp_path / 'small')
  assert not (tmp_path / 'small').exists()  # Refused before anything is written.
  with pytest.raises(ConfigError, match='not found.*python -m jaxscale.data.train_tokenizer'):
    data_tokenizers.make_tokenizer(f'hf:{tmp_path / "missing"}')
