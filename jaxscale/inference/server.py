"""The HTTP JSON server for a trained model (`python -m jaxscale.serve` runs it).

  python -m jaxscale.serve --workdir workdirs/default [--port 8000]
  python -m jaxscale.serve --export exported/mlp        # a classifier's jax.export files

Endpoints (FastAPI on uvicorn):
- `POST /generate` (language models): JSON `prompt` (text, or a list of token ids),
  `max_new_tokens`, `temperature` (0 = greedy), `top_k`, `top_p`, `seed` -> `text`, `tokens`.
- `POST /classify` (classifiers): `inputs` (an image as nested lists [H, W, C], or a text),
  `top_k` -> `classes`: [{`class`, `probability`}], most likely first.
- `GET /health`: the model, the queue and how many batches and requests were served.
- OpenAI-compatible `POST /v1/completions`, `GET /v1/models` and the tokenizer endpoints
  (`jaxscale.inference.openai_api`), sharing the batcher with `/generate`.

A request the model cannot take (a bad field, malformed JSON, an oversize prompt) gets a 400
whose JSON names the `field` and says what is wrong; a full queue gets a 503. Concurrent requests
are batched (up to `--max_batch`) by `jaxscale.inference.batcher`.
"""

import asyncio
import contextlib
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from jaxscale.inference.backends import BadRequest
from jaxscale.inference import openai_api
from jaxscale.inference.batcher import Batcher, QueueFull


class GenerateRequest(BaseModel):
  model_config = ConfigDict(extra='forbid')
  prompt: StrictStr | list[StrictInt]
  max_new_tokens: StrictInt | None = Field(None, ge=1)  # None: 64, or the server's limit.
  temperature: float = Field(0.0, ge=0)
  top_k: StrictInt | None = Field(None, ge=1)
  top_p: float | None = Field(None, gt=0, le=1)
  seed: StrictInt = 0


class ClassifyRequest(BaseModel):
  model_config = ConfigDict(extra='forbid')
  inputs: StrictStr | list
  top_k: StrictInt = Field(5, ge=1)


def _error(status: int, field: str | None, message: str) -> JSONResponse:
  return JSONResponse(status_code=status, content={'error': message, 'field': field})


def build_app(backend, *, max_batch: int = 8, max_queue: int = 64,
              max_wait_s: float = 0.005, model_id: str | None = None) -> FastAPI:
  """The FastAPI app serving `backend` (`jaxscale.inference.backends`); `model_id` names it on
  the OpenAI endpoints (default: the config's model name)."""
  batcher = Batcher(backend.run, max_batch=max_batch, max_queue=max_queue, max_wait_s=max_wait_s)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    worker = asyncio.create_task(batcher.run())
    yield
    worker.cancel()

  app = FastAPI(title='jaxscale', lifespan=lifespan)

  @app.exception_handler(RequestValidationError)
  async def invalid_request(request: Request, exc: RequestValidationError):
    # OpenAI routes answer in OpenAI's error JSON, the others in jaxscale's.
    reply = (lambda field, message: openai_api.error(400, message, field)) if _openai(request) \
        else (lambda field, message: _error(400, field, message))
    first = exc.errors()[0]
    if first['type'] == 'json_invalid':
      return reply(None, 'the request body is not valid JSON.')
    location = [str(part) for part in first['loc'] if part != 'body']
    field = location[0] if location else None
    if not location:
      return reply(None, f'send a JSON object: {first["msg"]}.')
    return reply(field, f'{".".join(location)}: {first["msg"]}.')

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, exc: HTTPException):
    if _openai(request):
      return openai_api.error(exc.status_code, f'{request.method} {request.url.path}: '
                              f'{exc.detail}.', code='not_found' if exc.status_code == 404
                              else None)
    return JSONResponse(status_code=exc.status_code, content={'detail': exc.detail})

  async def answer(kind: str, request: dict):
    if backend.kind != kind:
      endpoint = '/generate' if backend.kind == 'lm' else '/classify'
      return _error(400, None, f'this server holds a {backend.kind}: use {endpoint}.')
    try:
      checked = backend.check(request)
      return await batcher.submit(checked)
    except BadRequest as e:
      return _error(400, e.field, f'{e.field}: {e}')
    except QueueFull as e:
      return _error(503, None, str(e))

  @app.post('/generate')
  async def generate(request: GenerateRequest):
    return await answer('lm', request.model_dump())

  @app.post('/classify')
  async def classify(request: ClassifyRequest):
    return await answer('classifier', request.model_dump())

  openai_api.add_routes(app, backend, batcher, model_id or backend.config['model']['name'])

  @app.get('/health')
  async def health():
    return {'status': 'ok', 'model': backend.config['model']['name'], 'kind': backend.kind,
            'waiting': batcher.waiting, 'max_batch': batcher.max_batch,
            'max_queue': batcher.max_queue, 'batches_run': batcher.batches_run,
            'requests_served': batcher.requests_served}

  return app


def _openai(request: Request) -> bool:
  return request.url.path.startswith('/v1/') or request.url.path in (
      '/tokenize', '/detokenize', '/tokenizer_info')


@contextlib.contextmanager
def running_server(app, host: str = '127.0.0.1', port: int = 0, start_timeout_s: float = 60):
  """`app` served by uvicorn in a background thread (port 0: a free one); yields its base URL
  and stops the server on exit. For tests and benchmarks."""
  if not port:
    with socket.socket() as probe:
      probe.bind((host, 0))
      port = probe.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.time() + start_timeout_s
  while not server.started:
    if not thread.is_alive() or time.time() > deadline:
      raise RuntimeError(f'The server did not start on {host}:{port}.')
    time.sleep(0.05)
  try:
    yield f'http://{host}:{port}'
  finally:
    server.should_exit = True
    thread.join(timeout=30)
