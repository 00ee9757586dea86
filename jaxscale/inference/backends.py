"""The models behind the endpoints: a language model that generates for a batch of prompts, and a
classifier that returns each input's most likely classes.

Requests arrive validated for type (the server's request models); a backend checks what depends
on the model (prompt length, vocabulary, image shape) and raises `BadRequest` naming the field.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxscale.checkpoint import restore
from jaxscale.core import paths
from jaxscale.data import hf_tokenizer, special_tokens
from jaxscale.data.tokenizers import BYTE_SEPARATOR
from jaxscale.inference import export, sampling, scoring


DEFAULT_NEW_TOKENS = 64


class BadRequest(ValueError):
  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


@dataclasses.dataclass
class LanguageModel:
  """Generation with the KV cache; one compiled loop per (batch, prompt, length) bucket."""
  graphdef: nnx.GraphDef
  state: nnx.State
  config: dict
  max_prompt_tokens: int
  max_new_tokens: int
  kind: str = 'lm'

  def __post_init__(self):
    self.vocab_size = self.config['model']['vocab_size']
    tokenizer = self.config['dataset'].get('tokenizer', 'byte')
    self.byte_tokens = tokenizer == 'byte'
    directory = hf_tokenizer.hf_dir(tokenizer)
    self.hf_tokenizer = hf_tokenizer.load(directory) if directory else None
    # Models end a document with the separator (bytes) or EOS (hf:): stop there, as the
    # training data does.
    self.stop_tokens = (BYTE_SEPARATOR,) if self.byte_tokens else ()
    if self.hf_tokenizer is not None and self.hf_tokenizer.eos_id is not None:
      self.stop_tokens = (self.hf_tokenizer.eos_id,)

  def tokens(self, prompt) -> np.ndarray:
    """Checked token ids of a request's prompt (text for byte and hf: models, or a list of
    ids)."""
    if isinstance(prompt, str):
      if self.hf_tokenizer is not None:
        ids = np.asarray(self.hf_tokenizer.encode(prompt), np.int64)
      elif not self.byte_tokens:
        raise BadRequest('prompt', 'this model has no text tokenizer here: send the prompt as a '
                         'list of token ids.')
      else:
        ids = sampling.encode_bytes(prompt)
    else:
      ids = np.asarray(prompt, np.int64)
      if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
        raise BadRequest('prompt', f'token ids must lie in 0..{self.vocab_size - 1}.')
    if ids.size == 0:
      raise BadRequest('prompt', 'the prompt is empty; send at least one token.')
    if ids.size > self.max_prompt_tokens:
      raise BadRequest('prompt', f'the prompt has {ids.size} tokens; this server takes at most '
                       f'{self.max_prompt_tokens}.')
    return ids.astype(np.int32)

  def check(self, request: dict) -> dict:
    """The request with its prompt tokenized; BadRequest on what the model cannot take."""
    tokens = self.tokens(request['prompt'])
    max_new_tokens = request['max_new_tokens'] or min(DEFAULT_NEW_TOKENS, self.max_new_tokens)
    if max_new_tokens > self.max_new_tokens:
      raise BadRequest('max_new_tokens', f'at most {self.max_new_tokens} on this server, got '
                       f'{max_new_tokens}.')
    return dict(request, tokens=tokens, max_new_tokens=max_new_tokens)

  def text(self, tokens) -> str:
    """The text of token ids (byte and hf: models; empty for others), the separator kept."""
    if self.hf_tokenizer is not None:
      return self.hf_tokenizer.decode(tokens)
    return sampling.decode_bytes(tokens, stop_at_separator=False) if self.byte_tokens else ''

  def check_completion(self, request: dict) -> dict:
    """A /v1/completions prompt, tokenized and checked (`op` 'complete')."""
    tokens = self.tokens(request['prompt'])
    if request['max_new_tokens'] > self.max_new_tokens:
      raise BadRequest('max_tokens', f'at most {self.max_new_tokens} on this server, got '
                       f'{request["max_new_tokens"]}.')
    if request['stop'] and not (self.byte_tokens or self.hf_tokenizer is not None):
      raise BadRequest('stop', 'this model has no text tokenizer: stop strings need one.')
    return dict(request, op='complete', tokens=tokens, top_k=None)

  def run(self, requests: list[dict]) -> list[dict]:
    """A batch of /generate requests and /v1/completions prompts (`op` 'complete')."""
    generating = [r for r in requests if _generates(r)]
    rows = iter(self._generate(generating) if generating else ())
    results = []
    for request in requests:
      row = next(rows) if _generates(request) else None
      new = None if row is None else sampling.trim_at_stop(row, self.stop_tokens)
      if request.get('op') != 'complete':
        text = sampling.decode_bytes(new) if self.byte_tokens else None
        if self.hf_tokenizer is not None:
          text = self.hf_tokenizer.decode(new)
        results.append({'text': text, 'tokens': new.tolist()})
      else:
        stop = int(row[len(new)]) if row is not None and len(new) < len(row) else None
        results.append({'new_tokens': new, 'stop_token': stop})
    completions = [(r, result) for r, result in zip(requests, results)
                   if r.get('op') == 'complete']
    if completions:
      self._complete(completions)
    return results

  def _generate(self, requests: list[dict]) -> np.ndarray:
    options = [dict(temperature=r['temperature'], top_k=r['top_k'] or 0, top_p=r['top_p'] or 1.0,
                    key=jax.random.fold_in(jax.random.key(r['seed']), r.get('row', 0)))
               for r in requests]
    longest = max(r['max_new_tokens'] for r in requests)
    new_BxN = sampling.generate_rows(
        self.graphdef, self.state, [r['tokens'] for r in requests], options,
        min(sampling.bucket(longest), self.max_new_tokens), stop_tokens=self.stop_tokens)
    return [row[:r['max_new_tokens']] for r, row in zip(requests, new_BxN)]

  def _complete(self, completions: list[tuple[dict, dict]]):
    """Fills each completion's new tokens, finish reason and, where asked, the log-probabilities
    of prompt and new tokens (one forward pass over them all, `scoring`). A stop token that ended
    the completion is left out of its text but scored, as the token the model chose."""
    scored = [(r, result) for r, result in completions if r['logprobs'] is not None]
    scores = scoring.score_rows(self.graphdef, self.state, [
        np.concatenate([r['tokens'], [] if result['new_tokens'] is None else result['new_tokens'],
                        [] if result['stop_token'] is None else [result['stop_token']]]
                       ).astype(np.int32) for r, result in scored])
    by_id = {id(result): s for (_, result), s in zip(scored, scores)}
    for request, result in completions:
      score = by_id.get(id(result))
      new, stop = result['new_tokens'], result['stop_token']
      if request['max_new_tokens'] == 0:
        new = np.zeros((0,), np.int32)
      elif new is None:  # Greedy, one token, scored: the prompt's scores hold it already.
        top = int(score.top_ids[-1, 0])
        new, stop = (np.zeros((0,), np.int32), top) if top in self.stop_tokens else (
            np.asarray([top], np.int32), None)
      new, hit = self._cut_at_stop_strings(new, request['stop'])
      if hit:
        stop = None
      tokens = np.concatenate([request['tokens'], new]).astype(np.int32)
      result.update(new_tokens=new, prompt_tokens=request['tokens'], tokens=tokens,
                    finish_reason='stop' if stop is not None or hit else 'length')
      if score is not None:
        count = len(tokens) + (stop is not None)
        lps = np.concatenate([score.token_logprobs, score.top_logprobs[-1:, 0]])[:count - 1]
        result['scored_tokens'] = tokens if stop is None else np.append(tokens, stop)
        result['token_logprobs'] = [None] + [float(x) for x in lps]
        result['top'] = [None] + [list(zip(ids.tolist(), map(float, lp))) for ids, lp in
                                  zip(score.top_ids[:count - 1], score.top_logprobs[:count - 1])]

  def _cut_at_stop_strings(self, new: np.ndarray, stops) -> tuple[np.ndarray, bool]:
    """The new tokens before the first of the stop strings in their text, and whether one was."""
    text = self.text(new)
    cuts = [text.find(stop) for stop in stops or () if stop and stop in text]
    if not cuts:
      return new, False
    kept = text[:min(cuts)]
    count = 0
    while count < len(new) and kept.startswith(self.text(new[:count + 1])):
      count += 1
    return new[:count], True


def _generates(request: dict) -> bool:
  """Whether the request needs the generation loop: not for echo-only scoring (no new tokens) nor
  for one greedy token that scoring the prompt already picks."""
  if request.get('op') != 'complete':
    return True
  if request['max_new_tokens'] == 0:
    return False
  return not (request['max_new_tokens'] == 1 and request['temperature'] == 0
              and request['logprobs'] is not None)


@dataclasses.dataclass
class Classifier:
  """`forward(inputs [B, ...]) -> logits [B, K]`, with batches padded to powers of two."""
  forward: callable
  input_shape: tuple[int, ...]
  input_dtype: str
  class_names: list[str]
  config: dict
  kind: str = 'classifier'

  def check(self, request: dict) -> dict:
    inputs = request['inputs']
    if self.input_dtype == 'int32':  # A text classifier: CLS, bytes, PAD, as the pipeline does.
      if not isinstance(inputs, str):
        raise BadRequest('inputs', 'this classifier reads text: send a string.')
      ids = sampling.encode_bytes(inputs)
      seq_len = self.input_shape[0]
      if ids.size > seq_len - 1:
        raise BadRequest('inputs', f'the text has {ids.size} bytes; this classifier reads at most '
                         f'{seq_len - 1}.')
      row = np.full((seq_len,), special_tokens.PAD_ID, np.int32)
      row[0] = special_tokens.CLS_ID
      row[1:1 + ids.size] = ids
    else:
      try:
        row = np.asarray(inputs, np.float32)
      except (TypeError, ValueError):
        row = None
      if row is None or row.shape != self.input_shape:
        raise BadRequest('inputs', f'send one image as nested lists of shape '
                         f'{list(self.input_shape)} (height, width, channels), normalised as in '
                         'training.')
    return dict(request, row=row)

  def run(self, requests: list[dict]) -> list[dict]:
    rows = [r['row'] for r in requests]
    padded = sampling.bucket(len(rows))
    batch = np.stack(rows + [rows[0]] * (padded - len(rows)))
    probs_BxK = np.asarray(jax.nn.softmax(self.forward(batch), axis=-1))[:len(rows)]
    results = []
    for request, probs_K in zip(requests, probs_BxK):
      top = np.argsort(-probs_K)[:request['top_k']]
      results.append({'classes': [{'class': self.class_names[k], 'probability': float(probs_K[k])}
                                  for k in top]})
    return results


def from_workdir(workdir, *, max_prompt_tokens: int, max_new_tokens: int):
  """The backend of the newest checkpoint in `workdir` (LoRA adapters merged)."""
  model, config = restore.restore_model(workdir)
  kind = export.model_kind(model, config)
  if kind == 'token_model':
    raise ValueError('This run is a masked-LM encoder: it neither generates nor classifies.')
  model.eval()
  if kind == 'lm':
    graphdef, state = nnx.split(model)
    return LanguageModel(graphdef, state, config.to_dict(), max_prompt_tokens, max_new_tokens)
  graphdef, state = nnx.split(model)
  spec = export.input_spec(model, config, 1)
  pad_id = special_tokens.after(config.model.vocab_size - 3).pad if kind == 'text_classifier' \
      else None

  @jax.jit
  def forward(inputs):
    classifier = nnx.merge(graphdef, state)
    return classifier(inputs, inputs != pad_id) if pad_id is not None else classifier(inputs)

  names = export.class_names(paths.resolve(workdir), config.model.num_classes)
  return Classifier(forward, spec.shape[1:], str(spec.dtype), names, config.to_dict())


def from_export(directory, *, max_prompt_tokens: int, max_new_tokens: int):
  """A classifier backend from `python -m jaxscale.export` files (jax.export, no jaxscale
  model code)."""
  directory = pathlib.Path(directory)
  manifest = json.loads((directory / 'manifest.json').read_text())
  if manifest['kind'] not in ('image_classifier', 'text_classifier'):
    raise ValueError(f'--export serves classifiers; {directory} holds a {manifest["kind"]}. Serve '
                     'a language model from its --workdir.')
  del max_prompt_tokens, max_new_tokens
  params = {k: jnp.asarray(v) for k, v in np.load(directory / 'params.npz').items()}
  exported = jax.export.deserialize((directory / 'forward.bin').read_bytes())
  forward = jax.jit(lambda inputs: exported.call(params, inputs))
  spec = manifest['functions']['forward']['inputs'][0]
  # A text classifier's forward takes any length up to max_seq_len: rows are padded to it.
  shape = tuple(manifest.get('max_seq_len') if d == 'l' else d for d in spec['shape'][1:])
  return Classifier(forward, shape, spec['dtype'], manifest['class_names'], manifest['config'])
