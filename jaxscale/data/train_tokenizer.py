"""Trains a byte-level BPE tokenizer on a text dataset's train split, as an `hf:` directory.

    python -m jaxscale.data.train_tokenizer --dataset=python_stdlib --vocab_size=4096 \
        --out=workdirs/stdlib_bpe

Then `--config.dataset.tokenizer=hf:workdirs/stdlib_bpe` tokenizes with it
(`jaxscale.data.tokenizers`), and `transformers.AutoTokenizer.from_pretrained` reads the same
directory. The tokenizer is Hugging Face `tokenizers`' BPE over GPT-2's byte alphabet, so any
text (any bytes) encodes without an unknown token; its one special token, `<|endoftext|>`, is
the document separator (the last id). Training reads only the train split, so no eval document
shapes the vocabulary, and gives the same tokenizer for the same split and size.

A run with the tokenizer needs `config.model.vocab_size >= vocab_size`; a classifier or masked-LM
finetune of it needs room for the pad, CLS and mask ids after it too
(`special_tokens.after(vocab_size).vocab_size`).
"""

import json
import pathlib
from typing import Iterator

from absl import app, flags
import tensorflow_datasets as tfds

from jaxscale.config import config_base
from jaxscale.config.validation import ConfigError
from jaxscale.data import hf_tokenizer, sources, tokenizers

EOS_TOKEN = '<|endoftext|>'


def train_bpe(documents: Iterator[str], vocab_size: int, out_dir) -> pathlib.Path:
  """Trains the tokenizer on `documents` and writes `tokenizer.json`, `tokenizer_config.json`
  and `special_tokens_map.json` into `out_dir`; returns `out_dir`."""
  hf = hf_tokenizer.tokenizers_module()
  alphabet = hf.pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + 1:
    raise ConfigError(f'vocab_size={vocab_size}: a byte-level BPE needs at least '
                      f'{len(alphabet) + 1} ids (the {len(alphabet)} bytes and {EOS_TOKEN}).')
  backend = hf.Tokenizer(hf.models.BPE())
  # No prefix space: a document is encoded as it is, as the byte tokenizer does.
  backend.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(
      vocab_size=vocab_size - 1, initial_alphabet=alphabet, show_progress=False)
  backend.train_from_iterator(documents, trainer)  # Buffered by the library.
  # The separator after every learned id, so the ids of the bytes and merges do not move.
  backend.add_special_tokens([hf.AddedToken(EOS_TOKEN, special=True, normalized=False)])
  hf_tokenizer.save(backend, {'eos_token': EOS_TOKEN}, out_dir)
  return pathlib.Path(out_dir)


def train_on_dataset(name: str, vocab_size: int, out_dir, data_dir: str = '') -> pathlib.Path:
  """`train_bpe` on the train split of dataset `name` (config.dataset.name), prepared in
  `data_dir` ('' = the default)."""
  dataset_config = config_base.get_base_config().dataset
  dataset_config.update(name=name, data_dir=data_dir)
  return train_bpe(train_documents(dataset_config), vocab_size, out_dir)


def train_documents(dataset_config) -> Iterator[str]:
  """The texts of the dataset's train split (its `text` feature, as the pipeline reads it:
  bytes that are not UTF-8 become U+FFFD)."""
  source = sources.DATASETS.get(dataset_config.name)(dataset_config)
  features = source.builder.info.features
  if 'text' not in features:
    raise ConfigError(f"dataset {dataset_config.name!r} has no 'text' feature to train a "
                      'tokenizer on: choose a text dataset (python_stdlib, lm1b, c4).')
  examples = source.builder.as_dataset(split=source.train_split, shuffle_files=False)
  for example in tfds.as_numpy(examples.map(lambda e: e['text'])):
    yield tokenizers.as_text(example)


def main(argv):
  del argv
  args = flags.FLAGS
  out = train_on_dataset(args.dataset, args.vocab_size, args.out, args.data_dir)
  loaded = hf_tokenizer.load(out)
  print(json.dumps({'out': str(out), 'vocab_size': loaded.vocab_size,
                    'eos_id': loaded.eos_id, 'dataset': args.dataset}))


def _define_flags():
  """Only when run as a command: the module is imported by programs with flags of their own."""
  flags.DEFINE_string('dataset', 'python_stdlib', 'Text dataset whose train split the tokenizer '
                      'learns from (config.dataset.name).')
  flags.DEFINE_string('data_dir', '', 'config.dataset.data_dir: where the dataset is prepared; '
                      'empty: the default.')
  flags.DEFINE_integer('vocab_size', 4096, 'Token ids, the separator included.')
  flags.DEFINE_string('out', None, 'Directory to write the tokenizer files into.', required=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
