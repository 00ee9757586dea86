"""Hugging Face tokenizer files: a run's tokenizer as `tokenizer.json` for
`transformers.AutoTokenizer`, and a tokenizer directory as a run's tokenizer (`hf:DIR`).

- `write_tokenizer_files(config, out_dir)` writes `tokenizer.json`, `tokenizer_config.json` and
  `special_tokens_map.json` that encode any text to exactly the run's ids: byte-level runs (a
  byte-level BPE without merges, so id = byte; the separator, byte 0, is the EOS token; PAD, CLS
  and MASK at 256..258 where the vocabulary holds them) and SentencePiece runs (the `.model`'s
  own normalizer, pieces and scores). The run's document separator is `eos_token`; `encode`
  adds no special token, as the run's tokenizer does not (it appends the separator only between
  documents). `split_special_tokens` is on: text that spells a special token ('<mask>', '</s>')
  is encoded as text, as the run does.
- `load(DIR)`: the tokenizer of an HF directory through the `tokenizers` library, encoding as
  `AutoTokenizer.from_pretrained(DIR).encode` does; `dataset.tokenizer='hf:DIR'` tokenizes with
  it (`jaxscale.data.tokenizers`).
- `import_keys(hf_dir)`: the config keys an imported checkpoint's run gets: `dataset.tokenizer`
  ('hf:DIR' when the directory has `tokenizer.json`, else NO_TOKENIZER) and
  `export.max_seq_len` (config.json's `max_position_embeddings`).
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
from typing import Any

import numpy as np

from jaxscale.config import config_base, validation
from jaxscale.config.validation import ConfigError
from jaxscale.core import paths
from jaxscale.data import special_tokens

HF_PREFIX = 'hf:'
# dataset.tokenizer of a run whose weights came without tokenizer files: token ids only (text
# datasets refuse it; serving takes prompts as ids).
NO_TOKENIZER = 'none'
TOKENIZER_FILE = 'tokenizer.json'
# What `write_tokenizer_files` writes, and what an `hf:` directory's copy carries along.
FILES = (TOKENIZER_FILE, 'tokenizer_config.json', 'special_tokens_map.json')
_EXTRA_FILES = ('tokenizer.model', 'added_tokens.json', 'vocab.json', 'merges.txt')
# Token datasets with no text behind them: their ids have no tokenizer to write.
_NOT_TEXT = frozenset({'markov'})
_SPECIAL_KEYS = ('bos_token', 'eos_token', 'unk_token', 'pad_token', 'cls_token', 'mask_token',
                 'sep_token')


def tokenizers_module():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("Hugging Face tokenizers need the tokenizers package: pip install -e "
                      "'.[hf]'.") from error
  return tokenizers


def hf_dir(tokenizer: str) -> str | None:
  """The directory of a `dataset.tokenizer='hf:DIR'` value, resolved; None for other values."""
  if not tokenizer.startswith(HF_PREFIX):
    return None
  return paths.resolve_str(tokenizer[len(HF_PREFIX):])


# ---------------------------------------------------------------------------------------------
# Reading: an HF tokenizer directory.


@dataclasses.dataclass(frozen=True)
class HfTokenizer:
  directory: str
  backend: Any          # tokenizers.Tokenizer, set up as AutoTokenizer sets up its own.
  vocab_size: int       # Every id it can produce is below this.
  special_ids: dict     # 'eos_token' -> id, ... for the special tokens the directory names.

  @property
  def eos_id(self) -> int | None:
    return self.special_ids.get('eos_token')

  def encode(self, text: str) -> list[int]:
    """As `AutoTokenizer.encode(text)`: with the tokenizer's own special tokens (e.g. a BOS)."""
    return self.backend.encode(text).ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes of text each id stands for (0 for special tokens), for bits per byte."""
    description = json.loads(self.backend.to_str())
    byte_level = 'ByteLevel' in json.dumps([description.get('pre_tokenizer'),
                                            description.get('decoder')])
    specials = {token['id'] for token in description.get('added_tokens', []) if token['special']}

    def count(token_id):
      token = self.backend.id_to_token(token_id)
      if token is None or token_id in specials:
        return 0
      if byte_level:  # One character per byte (GPT-2's byte-to-unicode table).
        return len(token)
      if len(token) == 6 and token.startswith('<0x') and token.endswith('>'):
        return 1  # A byte-fallback piece.
      return len(token.replace('\u2581', ' ').encode('utf-8'))
    return np.array([count(i) for i in range(self.vocab_size)], np.float64)


def _read_json(path: pathlib.Path) -> dict:
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ConfigError(f'{path} is not valid JSON ({error}).') from error


def _token_content(value) -> str | None:
  return value.get('content') if isinstance(value, dict) else value


def load(directory) -> HfTokenizer:
  """The tokenizer of an HF directory (its `tokenizer.json`, with `tokenizer_config.json` and
  `special_tokens_map.json` where present)."""
  directory = pathlib.Path(paths.resolve_str(directory))
  path = directory / TOKENIZER_FILE
  if not path.exists():
    raise ConfigError(f'{path} not found: an hf: tokenizer is a directory with a tokenizer.json '
                      '(as AutoTokenizer.save_pretrained writes it); train one on a text '
                      'dataset with `python -m jaxscale.data.train_tokenizer --out=DIR`.')
  try:
    backend = tokenizers_module().Tokenizer.from_file(str(path))
  except Exception as error:  # The Rust loader's own error type.
    raise ConfigError(f'{path} is not a tokenizers file: {error}') from error
  settings = {**_read_json(directory / 'special_tokens_map.json'),
              **_read_json(directory / 'tokenizer_config.json')}
  # AutoTokenizer encodes text that spells a special token as text under split_special_tokens.
  backend.encode_special_tokens = bool(settings.get('split_special_tokens', False))
  special_ids = {}
  for key in _SPECIAL_KEYS:
    content = _token_content(settings.get(key))
    if content is not None and backend.token_to_id(content) is not None:
      special_ids[key] = backend.token_to_id(content)
  vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
  return HfTokenizer(str(directory), backend, vocab_size, special_ids)


@validation.register_check
def check_tokenizer(config):
  """`dataset.tokenizer='hf:DIR'`: the directory holds a tokenizer whose ids the model has."""
  tokenizer = config.dataset.get('tokenizer', 'byte')
  directory = hf_dir(tokenizer)
  if directory is None or not config.model.get('vocab_size'):
    return
  loaded = load(directory)
  if loaded.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f'{pathlib.Path(directory) / TOKENIZER_FILE} has {loaded.vocab_size} token ids but '
        f'config.model.vocab_size={config.model.vocab_size}: use the tokenizer that came with '
        'the weights, or set config.model.vocab_size=0 to take it from the tokenizer.')


# ---------------------------------------------------------------------------------------------
# Writing: a run's tokenizer as HF files.


def write_tokenizer_files(config, out_dir) -> str | None:
  """Writes the run's tokenizer into `out_dir` so that `AutoTokenizer.from_pretrained(out_dir)`
  encodes text to the run's ids; returns the tokenizer kind written ('byte', 'sentencepiece',
  'hf'), or None (nothing written) when the run has no text tokenizer: image models, token
  datasets such as markov, and imported weights that came without one (NO_TOKENIZER).

  ConfigError if the tokenizer has ids the model's vocabulary lacks."""
  kind = config.dataset.get('tokenizer', 'byte')
  vocab_size = config.model.get('vocab_size', 0)
  if not vocab_size or kind == NO_TOKENIZER or config.dataset.name in _NOT_TEXT:
    return None
  out_dir = pathlib.Path(out_dir)
  directory = hf_dir(kind)
  if directory is not None:
    _check_fits(load(directory).vocab_size, vocab_size, pathlib.Path(directory) / TOKENIZER_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES + _EXTRA_FILES:
      if (pathlib.Path(directory) / name).exists():
        shutil.copyfile(pathlib.Path(directory) / name, out_dir / name)
    return 'hf'
  if kind == 'byte':
    backend, names = _byte_level(), {'eos_token': _byte_char(special_tokens.BYTE_SEPARATOR)}
  elif kind == 'sentencepiece':
    model_path = paths.resolve_optional(config.dataset.spm_model_path)
    backend, names = _sentencepiece(model_path)
  else:
    raise ConfigError(f'config.dataset.tokenizer={kind!r} has no Hugging Face form.')
  base_vocab_size = backend.get_vocab_size(with_added_tokens=True)
  _check_fits(base_vocab_size, vocab_size, 'config.dataset.tokenizer')
  specials = special_tokens.after(base_vocab_size)
  if vocab_size >= specials.vocab_size:  # The pad, CLS and mask ids of MLM and classifiers.
    names.update(pad_token='<pad>', cls_token='<cls>', mask_token='<mask>')
  added = [tokenizers_module().AddedToken(content, special=True, normalized=False)
           for content in names.values()]
  backend.add_special_tokens(added)
  for key in ('pad_token', 'cls_token', 'mask_token'):  # Added in this order: 256, 257, 258.
    if key in names and backend.token_to_id(names[key]) != getattr(specials, key[:-6]):
      raise AssertionError(f'{key} got id {backend.token_to_id(names[key])}.')
  save(backend, names, out_dir, model_max_length=config_base.max_seq_len(config))
  return kind


def save(backend, names: dict[str, str], out_dir, **settings):
  """Writes `backend` (a `tokenizers.Tokenizer`) as an HF directory: `tokenizer.json`, and
  `tokenizer_config.json` and `special_tokens_map.json` naming its special tokens (`names`, e.g.
  {'eos_token': ...}). Encoding adds no special token and text that spells one stays text, as a
  run's tokenizer does; `settings` adds keys (e.g. `model_max_length`)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  backend.save(str(out_dir / TOKENIZER_FILE))
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', **names, **settings,
            'split_special_tokens': True, 'clean_up_tokenization_spaces': False,
            'add_bos_token': False, 'add_eos_token': False}
  (out_dir / 'tokenizer_config.json').write_text(json.dumps(config, indent=2) + '\n')
  (out_dir / 'special_tokens_map.json').write_text(json.dumps(names, indent=2) + '\n')


def _check_fits(tokenizer_vocab_size: int, vocab_size: int, source):
  if tokenizer_vocab_size > vocab_size:
    raise ConfigError(f'{source} has {tokenizer_vocab_size} token ids but '
                      f'config.model.vocab_size={vocab_size}: the model has no row for the rest.')


def _byte_char(byte: int) -> str:
  """The character GPT-2's byte-level table (what `ByteLevel` maps bytes to) gives `byte`."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  if byte in printable:
    return chr(byte)
  return chr(256 + sum(1 for b in range(byte) if b not in printable))


def _byte_level():
  """A tokenizer whose ids are the UTF-8 bytes of the text: ByteLevel maps each byte to a
  character, and a BPE without merges maps that character to the byte's value."""
  tk = tokenizers_module()
  vocab = {_byte_char(b): b for b in range(special_tokens.NUM_BYTES)}
  assert sorted(vocab) == sorted(tk.pre_tokenizers.ByteLevel.alphabet())
  backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
  # No regex split and no prefix space: the whole text, byte for byte.
  backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  backend.decoder = tk.decoders.ByteLevel()
  return backend


def _sentencepiece(model_path: str | None):
  """The `.model`'s tokenizer in `tokenizers` form, and its special token names: its normalizer
  spec (charsmap, extra-whitespace removal, dummy prefix) in SentencePiece's order, its pieces
  with their scores, byte fallback, and user-defined pieces emitted whole."""
  if not model_path:
    raise ConfigError("tokenizer='sentencepiece' needs config.dataset.spm_model_path.")
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  tk = tokenizers_module()
  proto = sentencepiece_model_pb2.ModelProto()
  with open(model_path, 'rb') as model_file:
    proto.ParseFromString(model_file.read())
  piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
  spec, trainer = proto.normalizer_spec, proto.trainer_spec
  # SentencePiece never matches control, unknown and byte pieces ('</s>', '<0x41>') in text, but
  # a tokenizers model would. After the normalizer below no text has a '<' (it becomes a space,
  # which whitespace escaping has already removed), so pieces that SentencePiece matches spell
  # '<' as a space, and the others, which all start with '<', can never match.
  hide = spec.escape_whitespaces
  matched = (piece_type.NORMAL, piece_type.USER_DEFINED)
  names = [p.piece.replace('<', ' ') if hide and p.type in matched else p.piece
           for p in proto.pieces]
  if trainer.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
    vocab = [(name, p.score) for name, p in zip(names, proto.pieces)]
    model = tk.models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
  elif trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
    vocab = {name: i for i, name in enumerate(names)}
    # Merges in the order SentencePiece applies them: the higher the merged piece's score first.
    normal = {names[i]: (p.score, i) for i, p in enumerate(proto.pieces)
              if p.type == piece_type.NORMAL}
    ranked = sorted((-normal[piece][0], normal[piece][1], piece[:cut], piece[cut:])
                    for piece in normal for cut in range(1, len(piece))
                    if piece[:cut] in normal and piece[cut:] in normal)
    model = tk.models.BPE(vocab=vocab, merges=[(left, right) for *_, left, right in ranked],
                          unk_token=names[trainer.unk_id], fuse_unk=True,
                          byte_fallback=trainer.byte_fallback)
  else:
    raise ConfigError(f'{model_path}: SentencePiece {trainer.model_type} models have no '
                      'tokenizers form here; train a unigram or bpe model.')
  backend = tk.Tokenizer(model)
  steps = []  # The normalizer, in SentencePiece's order.
  if spec.precompiled_charsmap:
    steps.append(tk.normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:  # Spaces only: SentencePiece leaves newlines alone.
    steps += [tk.normalizers.Replace(tk.Regex(r'\A +| +\z'), ''),
              tk.normalizers.Replace(tk.Regex(' {2,}'), ' ')]
  if spec.escape_whitespaces:
    steps.append(tk.normalizers.Replace(' ', '\u2581'))
  if spec.add_dummy_prefix:
    steps.append(tk.normalizers.Prepend('\u2581'))
  if hide:
    steps.append(tk.normalizers.Replace('<', ' '))
  if steps:
    backend.normalizer = tk.normalizers.Sequence(steps)
  user_defined = sorted((names[i] for i, p in enumerate(proto.pieces)
                         if p.type == piece_type.USER_DEFINED), key=len, reverse=True)
  if user_defined:  # SentencePiece emits them whole and never merges them.
    pattern = '|'.join(re.escape(piece) for piece in user_defined)
    backend.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(pattern), behavior='isolated')
  steps = [tk.decoders.Replace(' ', '<')] if hide else []
  steps.append(tk.decoders.Replace('\u2581', ' '))
  if trainer.byte_fallback:
    steps.append(tk.decoders.ByteFallback())
  steps.append(tk.decoders.Fuse())
  if spec.add_dummy_prefix:
    steps.append(tk.decoders.Strip(content=' ', left=1, right=0))
  backend.decoder = tk.decoders.Sequence(steps)
  names = {}
  for key, piece_id, piece in (('eos_token', trainer.eos_id, trainer.eos_piece),
                               ('bos_token', trainer.bos_id, trainer.bos_piece),
                               ('unk_token', trainer.unk_id, trainer.unk_piece)):
    if piece_id >= 0:
      names[key] = proto.pieces[piece_id].piece or piece
  if 'eos_token' not in names:
    raise ConfigError(f'SentencePiece model {model_path} has no EOS piece to separate documents.')
  return backend, names


# ---------------------------------------------------------------------------------------------
# Importing: the tokenizer that came with a checkpoint.


def import_keys(hf_dir_path, copy_to=None) -> dict[str, Any]:
  """Config keys for a run of the HF checkpoint in `hf_dir_path`: {'dataset.tokenizer':
  'hf:DIR' (or NO_TOKENIZER when the directory has no tokenizer.json), 'export.max_seq_len':
  config.json's max_position_embeddings (0 if it names none)}. With `copy_to`, the tokenizer
  files are copied there and DIR is that copy (so the run keeps its tokenizer when the source
  goes). ConfigError if the tokenizer has ids beyond config.json's vocab_size."""
  source = pathlib.Path(paths.resolve_str(hf_dir_path))
  hf_config = _read_json(source / 'config.json')
  keys = {'dataset.tokenizer': NO_TOKENIZER,
          'export.max_seq_len': int(hf_config.get('max_position_embeddings') or 0)}
  if not (source / TOKENIZER_FILE).exists():
    return keys
  tokenizer = load(source)
  if hf_config.get('vocab_size') and tokenizer.vocab_size > hf_config['vocab_size']:
    raise ConfigError(f'{source / TOKENIZER_FILE} has {tokenizer.vocab_size} token ids but '
                      f'{source / "config.json"} has vocab_size={hf_config["vocab_size"]}: '
                      'the tokenizer belongs to another model.')
  directory = source
  if copy_to is not None:
    directory = pathlib.Path(paths.resolve_str(copy_to))
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES + _EXTRA_FILES:
      if (source / name).exists():
        shutil.copyfile(source / name, directory / name)
  keys['dataset.tokenizer'] = HF_PREFIX + os.fspath(directory)
  return keys
