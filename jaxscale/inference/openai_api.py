"""OpenAI-compatible endpoints on the jaxscale server, so OpenAI clients and lm-eval's
`local-completions` model talk to a served run unchanged.

- `POST /v1/completions`: `model`, `prompt` (a string, a list of strings, a list of token ids, or
  a list of such lists), `max_tokens` (default 16; 0 with `echo` only scores the prompt),
  `temperature` (default 1; 0 = greedy), `top_p`, `stop`, `seed`, `logprobs` (0..5 alternatives)
  and `echo`; `stream=true` answers in server-sent events. Each prompt of a list is one request
  to the batcher (they batch together); prompt i samples with fold_in(key(seed), i), as
  `sampling.generate` does for row i.
- `GET /v1/models`, `GET /v1/models/{id}`.
- `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (byte models): the tokenizer
  endpoints lm-eval's `remote` tokenizer backend reads.

Errors are OpenAI's error JSON, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
field, 404 for an unknown model or path, 503 when the queue is full.
"""

import asyncio
import codecs
import json
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from jaxscale.inference import sampling
from jaxscale.inference.backends import BadRequest
from jaxscale.inference.batcher import QueueFull
from jaxscale.inference.scoring import TOP_K

DEFAULT_MAX_TOKENS = 16  # OpenAI's default.


class CompletionRequest(BaseModel):
  model_config = ConfigDict(extra='ignore')  # Clients send fields (user, ...) that change nothing.
  model: StrictStr
  prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
  max_tokens: StrictInt | None = Field(DEFAULT_MAX_TOKENS, ge=0)
  temperature: float | None = Field(1.0, ge=0, le=2)
  top_p: float | None = Field(1.0, gt=0, le=1)
  stop: StrictStr | list[StrictStr] | None = None
  seed: StrictInt | None = None
  logprobs: StrictInt | None = Field(None, ge=0, le=TOP_K)
  echo: bool = False
  stream: bool = False
  n: StrictInt = Field(1, ge=1, le=1)  # One completion per prompt.


class TokenizeRequest(BaseModel):
  model_config = ConfigDict(extra='ignore')
  prompt: StrictStr
  add_special_tokens: bool = False  # The byte tokenizer adds none.


class DetokenizeRequest(BaseModel):
  model_config = ConfigDict(extra='ignore')
  tokens: list[StrictInt]


def error(status: int, message: str, param: str | None = None,
          code: str | None = None) -> JSONResponse:
  kind = {400: 'invalid_request_error', 404: 'not_found_error',
          503: 'server_overloaded'}.get(status, 'server_error')
  return JSONResponse(status_code=status, content={
      'error': {'message': message, 'type': kind, 'param': param, 'code': code}})


def add_routes(app: FastAPI, backend, batcher, model_id: str):
  created = int(time.time())
  model_card = {'id': model_id, 'object': 'model', 'created': created, 'owned_by': 'jaxscale'}

  @app.get('/v1/models')
  async def list_models():
    return {'object': 'list', 'data': [model_card]}

  @app.get('/v1/models/{name:path}')
  async def get_model(name: str):
    if name != model_id:
      return error(404, f'The model {name!r} does not exist; this server holds {model_id!r}.',
                   'model', 'model_not_found')
    return model_card

  @app.post('/v1/completions')
  async def completions(request: CompletionRequest):
    if request.model != model_id:
      return error(404, f'The model {request.model!r} does not exist; this server holds '
                   f'{model_id!r} (GET /v1/models).', 'model', 'model_not_found')
    if backend.kind != 'lm':
      return error(400, f'this server holds a {backend.kind}: use /classify.', 'model')
    prompts = _prompt_list(request.prompt)
    if not prompts:
      return error(400, 'prompt: send at least one prompt.', 'prompt')
    if request.max_tokens == 0 and not request.echo:
      return error(400, 'max_tokens: 0 returns nothing unless echo is true.', 'max_tokens')
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    shared = dict(max_new_tokens=DEFAULT_MAX_TOKENS if request.max_tokens is None
                  else request.max_tokens,
                  temperature=1.0 if request.temperature is None else request.temperature,
                  top_p=request.top_p, seed=request.seed or 0, stop=stops,
                  logprobs=request.logprobs, echo=request.echo)
    try:
      checked = [backend.check_completion(dict(shared, prompt=prompt, row=i))
                 for i, prompt in enumerate(prompts)]
      results = await asyncio.gather(*(batcher.submit(item) for item in checked))
    except BadRequest as e:
      param = 'max_tokens' if e.field == 'max_new_tokens' else e.field
      return error(400, f'{param}: {e}', param)
    except QueueFull as e:
      return error(503, str(e))
    response_id, now = f'cmpl-{uuid.uuid4().hex}', int(time.time())
    if request.stream:
      return StreamingResponse(_events(backend, results, request, response_id, now),
                               media_type='text/event-stream')
    choices = [_choice(backend, i, result, request) for i, result in enumerate(results)]
    prompt_tokens = sum(len(r['prompt_tokens']) for r in results)
    completion_tokens = sum(len(r['new_tokens']) for r in results)
    return {'id': response_id, 'object': 'text_completion', 'created': now, 'model': model_id,
            'choices': choices,
            'usage': {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
                      'total_tokens': prompt_tokens + completion_tokens}}

  def has_text_tokenizer() -> bool:
    return backend.kind == 'lm' and backend.byte_tokens

  @app.post('/tokenize')
  async def tokenize(request: TokenizeRequest):
    if not has_text_tokenizer():
      return error(400, 'this model has no text tokenizer.', 'prompt')
    tokens = sampling.encode_bytes(request.prompt)  # Any length: only prompts are limited.
    return {'tokens': [int(t) for t in tokens], 'count': len(tokens),
            'max_model_len': backend.max_prompt_tokens}

  @app.post('/detokenize')
  async def detokenize(request: DetokenizeRequest):
    if not has_text_tokenizer():
      return error(400, 'this model has no text tokenizer.', 'tokens')
    if any(not 0 <= t < 256 for t in request.tokens):
      return error(400, 'tokens: byte token ids lie in 0..255.', 'tokens')
    return {'prompt': backend.text(request.tokens)}

  @app.get('/tokenizer_info')
  async def tokenizer_info():
    if not has_text_tokenizer():
      return error(400, 'this model has no text tokenizer.')
    # Byte 0 separates documents, as an end-of-text token does.
    return {'tokenizer_class': 'bytes', 'eos_token': '\x00', 'bos_token': None,
            'pad_token': None, 'model_max_length': backend.max_prompt_tokens}


def _prompt_list(prompt) -> list:
  """The request's prompts: one string or id list, or a list of them."""
  if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
    return [prompt]
  return list(prompt)


def token_string(backend, token: int) -> str:
  """A token as the logprobs object names it: its text, or `bytes:\\xNN` for a byte that is not
  text by itself (as OpenAI writes partial UTF-8)."""
  if not backend.byte_tokens:
    return str(token)
  return chr(token) if token < 128 else f'bytes:\\x{token:02x}'


def _choice(backend, index: int, result: dict, request: CompletionRequest) -> dict:
  first = 0 if request.echo else len(result['prompt_tokens'])
  shown = result['tokens'][first:]
  choice = {'index': index, 'text': backend.text(shown), 'logprobs': None,
            'finish_reason': result['finish_reason']}
  if request.logprobs is not None:
    scored = result['scored_tokens'][first:]  # With the stop token that ended it, if one did.
    alternatives = [None if top is None else {token_string(backend, t): lp
                                              for t, lp in top[:max(request.logprobs, 1)]}
                    for top in result['top'][first:]]
    choice['logprobs'] = {
        'tokens': [token_string(backend, int(t)) for t in scored],
        'token_logprobs': result['token_logprobs'][first:],
        'top_logprobs': alternatives,
        'text_offset': [len(backend.text(scored[:i])) for i in range(len(scored))]}
  return choice


def _events(backend, results, request, response_id: str, now: int):
  """Server-sent events: the prompt (with echo), then one event per new token, then the finish
  reason, then [DONE]. The events follow the batch's generation."""
  def event(index, text, finish_reason=None):
    chunk = {'id': response_id, 'object': 'text_completion', 'created': now,
             'model': request.model, 'choices': [{'index': index, 'text': text, 'logprobs': None,
                                                  'finish_reason': finish_reason}]}
    return f'data: {json.dumps(chunk)}\n\n'

  for index, result in enumerate(results):
    if request.echo:
      yield event(index, backend.text(result['prompt_tokens']))
    decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
    for token in result['new_tokens']:
      piece = decoder.decode(bytes([int(token)])) if backend.byte_tokens else ''
      if piece:
        yield event(index, piece)
    tail = decoder.decode(b'', final=True)
    yield event(index, tail, result['finish_reason'])
  yield 'data: [DONE]\n\n'
