"""Text -> token ids inside tf.data, with a document separator appended to every document.

Tokenizers: 'byte', 'sentencepiece', and 'hf:DIR' (a Hugging Face tokenizer.json, see
`hf_tokenizer`, run like the sentencepiece package in a `tf.numpy_function`).

The byte tokenizer and SentencePiece through tensorflow-text are TensorFlow ops, so a pipeline
using them stays checkpointable by tf.data. Without tensorflow-text (its metadata requires the full
`tensorflow` package, so `pip install -e .[sentencepiece]` cannot bring it), SentencePiece runs
through the `sentencepiece` package in a `tf.numpy_function`: the same tokens, but the train
iterator's position is then restored by replaying the stream (see jaxscale.checkpoint.checkpointing). Each
tokenizer knows how many UTF-8 bytes every token id stands for, from which the pipeline reports
bytes per token (and so the trainer bits per byte).
"""

import dataclasses
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from jaxscale.config.validation import ConfigError
from jaxscale.data import hf_tokenizer as hf_tokenizer_lib
from jaxscale.data.special_tokens import BYTE_SEPARATOR  # noqa: F401  (the public name here too)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  vocab_size: int
  tokenize_document: Callable[[tf.Tensor], tf.Tensor]  # string scalar -> int32 [num_tokens]
  token_bytes: np.ndarray  # float64 [vocab_size]: UTF-8 bytes each id stands for


def byte_tokenizer() -> Tokenizer:
  def tokenize_document(text):
    tokens = tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)
    return tf.concat([tokens, [BYTE_SEPARATOR]], axis=0)
  # The separator counts as one byte (as a newline would), so bytes per token is exactly 1.
  return Tokenizer(256, tokenize_document, np.ones(256))


SENTENCEPIECE_BACKENDS = ('auto', 'tensorflow_text', 'sentencepiece')


def sentencepiece_tokenizer(model_path: str, backend: str = 'auto') -> Tokenizer:
  """SentencePiece with its EOS id as the document separator. `backend` 'auto' takes
  tensorflow-text's TF op where it is installed, else the `sentencepiece` package."""
  if not model_path:
    raise ValueError("tokenizer='sentencepiece' needs config.dataset.spm_model_path.")
  with tf.io.gfile.GFile(model_path, 'rb') as model_file:
    model = model_file.read()
  if backend == 'auto':
    backend = 'tensorflow_text' if _installed('tensorflow_text') else 'sentencepiece'
  if backend == 'tensorflow_text':
    return _tensorflow_text_tokenizer(model, model_path)
  if backend == 'sentencepiece':
    return _sentencepiece_package_tokenizer(model, model_path)
  raise ValueError(f'SentencePiece backend {backend!r}; choose one of {SENTENCEPIECE_BACKENDS}.')


def as_text(document) -> str:
  """A document's bytes (or, called eagerly, a 0-d array of them) as the str a Python tokenizer
  takes. Bytes that are not UTF-8 (source files of codec tests, scraped text) become U+FFFD, as
  `bytes.decode(errors='replace')` makes them, rather than stopping the run; the byte tokenizer
  keeps them as they are."""
  return np.asarray(document).item().decode('utf-8', errors='replace')


def _installed(module: str) -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec(module) is not None


def _tensorflow_text_tokenizer(model: bytes, model_path: str) -> Tokenizer:
  import tensorflow_text  # pylint: disable=import-outside-toplevel
  return _op_tokenizer(
      tensorflow_text.SentencepieceTokenizer(model=model, out_type=tf.int32, add_eos=True),
      model_path)


def _op_tokenizer(tokenizer, model_path: str) -> Tokenizer:
  """A SentencePiece TensorFlow op (tensorflow_text.SentencepieceTokenizer's interface:
  `tokenize` appending EOS, `vocab_size`, `id_to_string`) as a Tokenizer. Pure TF, so tf.data
  saves the train iterator itself."""
  if tokenizer.tokenize('').shape[0] != 1:
    raise ValueError(f'SentencePiece model {model_path} has no EOS piece to separate documents.')
  vocab_size = int(tokenizer.vocab_size())
  pieces = [piece.decode('utf-8')
            for piece in tokenizer.id_to_string(tf.range(vocab_size)).numpy()]
  return Tokenizer(vocab_size, tokenizer.tokenize, _sentencepiece_piece_bytes(pieces))


def _sentencepiece_package_tokenizer(model: bytes, model_path: str) -> Tokenizer:
  try:
    import sentencepiece  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("tokenizer='sentencepiece' needs the sentencepiece package: pip install -e "
                      "'.[sentencepiece]' (or tensorflow-text of the installed TensorFlow's "
                      'release, installed with --no-deps).') from error
  processor = sentencepiece.SentencePieceProcessor(model_proto=model)
  eos = processor.eos_id()
  if eos < 0:
    raise ValueError(f'SentencePiece model {model_path} has no EOS piece to separate documents.')

  def encode(text) -> np.ndarray:
    return np.array(processor.encode(as_text(text)) + [eos], np.int32)

  def tokenize_document(text):
    # Stateful: tf.data then refuses to save the iterator (a Python function's token would not
    # exist in a resumed process) and the checkpoint records a replay instead.
    tokens = tf.numpy_function(encode, [text], tf.int32, stateful=True)
    tokens.set_shape([None])
    return tokens
  pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
  return Tokenizer(len(pieces), tokenize_document, _sentencepiece_piece_bytes(pieces))


_BYTE_PIECE = re.compile(r'<0x[0-9A-F]{2}>')
_SPECIAL_PIECES = frozenset({'<unk>', '<s>', '</s>', '<pad>'})


def _sentencepiece_piece_bytes(pieces: list[str]) -> np.ndarray:
  """UTF-8 bytes of text each piece stands for.

  '▁' marks a space. Byte-fallback pieces stand for one byte, special pieces for none: the EOS
  separator is followed by the next document's dummy-prefix '▁', which already counts the one
  byte a separator stands for in the byte tokenizer.
  """
  def piece_bytes(piece):
    if _BYTE_PIECE.fullmatch(piece):
      return 1
    if piece in _SPECIAL_PIECES:
      return 0
    return len(piece.replace('\u2581', ' ').encode('utf-8'))
  return np.array([piece_bytes(piece) for piece in pieces], np.float64)


def hf_tokenizer(directory: str) -> Tokenizer:
  """An HF tokenizer directory's `tokenizer.json` (`jaxscale.data.hf_tokenizer`): each document
  encoded as `AutoTokenizer.encode` does (with the tokenizer's own special tokens, e.g. a BOS),
  then its EOS token as the separator. The `tokenizers` library runs in a `tf.numpy_function`,
  so a tf.data train iterator resumes by replay, as for the sentencepiece package."""
  loaded = hf_tokenizer_lib.load(directory)
  eos = loaded.eos_id
  if eos is None:
    raise ConfigError(f'{directory}: tokenizer_config.json or special_tokens_map.json names no '
                      'eos_token of tokenizer.json to separate documents; add one.')

  def encode(text) -> np.ndarray:  # bytes (or, called eagerly, a 0-d array of them)
    return np.array(loaded.encode(as_text(text)) + [eos], np.int32)

  def tokenize_document(text):
    tokens = tf.numpy_function(encode, [text], tf.int32, stateful=True)
    tokens.set_shape([None])
    return tokens
  return Tokenizer(loaded.vocab_size, tokenize_document, loaded.token_bytes())


def make_tokenizer(name: str, spm_model_path: str = '') -> Tokenizer:
  if name == 'byte':
    return byte_tokenizer()
  if name == 'sentencepiece':
    return sentencepiece_tokenizer(spm_model_path)
  if hf_tokenizer_lib.hf_dir(name):
    return hf_tokenizer(hf_tokenizer_lib.hf_dir(name))
  if name == hf_tokenizer_lib.NO_TOKENIZER:
    raise ConfigError("config.dataset.tokenizer='none': these weights came without tokenizer "
                      "files, so text cannot be tokenized; set config.dataset.tokenizer='hf:DIR' "
                      'to a directory with the tokenizer.json made for them.')
  raise ValueError(f"Unknown tokenizer {name!r}; choose one of: byte, sentencepiece, hf:DIR")
