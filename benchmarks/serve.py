"""Requests/s and latency of `python -m jaxscale.serve`'s /generate, as JSON lines.

  python benchmarks/serve.py [--config configs/default.py] [--clients 1,8] [--requests 32]
      [--prompt_len 64] [--new_tokens 64] [--max_batch 8]

The config's language model with random weights, served on localhost in this process. For each
client count, that many clients send `--requests` greedy requests in all, each waiting for its
answer before sending the next; one row per count gives requests/s and p50/p99 latency (after
a warm-up round that compiles the batch shapes).
"""

import asyncio
import json
import time

import httpx
import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxscale.inference import backends, server
from jaxscale.models import build

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Model config file.')
_CLIENTS = flags.DEFINE_list('clients', ['1', '8'], 'Concurrent client counts.')
_REQUESTS = flags.DEFINE_integer('requests', 32, 'Requests per client count.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 64, 'Prompt bytes.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'max_new_tokens of each request.')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 8, "The server's --max_batch.")


async def _load(url: str, clients: int, num_requests: int, body: dict) -> list[float]:
  """Latencies of `num_requests` requests sent by `clients` concurrent clients."""
  latencies = []
  remaining = iter(range(num_requests))

  async def client(http):
    for _ in remaining:
      start = time.perf_counter()
      response = await http.post('/generate', json=body)
      response.raise_for_status()
      latencies.append(time.perf_counter() - start)

  async with httpx.AsyncClient(base_url=url, timeout=600) as http:
    await asyncio.gather(*(client(http) for _ in range(clients)))
  return latencies


def main(argv):
  del argv
  config = _CONFIG.value
  config.model.vocab_size = 256
  config.dataset.tokenizer = 'byte'
  model = build.build_model(config.model, config.seed)
  model.eval()
  graphdef, state = nnx.split(model)
  backend = backends.LanguageModel(graphdef, state, config.to_dict(),
                                   max_prompt_tokens=_PROMPT_LEN.value,
                                   max_new_tokens=_NEW_TOKENS.value)
  # Random weights may emit the separator early; a byte the model never stops at keeps every
  # answer at its full length.
  backend.stop_tokens = ()
  prompt = ''.join(chr(c) for c in np.random.default_rng(0).integers(97, 123, _PROMPT_LEN.value))
  body = {'prompt': prompt, 'max_new_tokens': _NEW_TOKENS.value}
  web_app = server.build_app(backend, max_batch=_MAX_BATCH.value, max_queue=256)
  with server.running_server(web_app) as url:
    for clients in map(int, _CLIENTS.value):
      asyncio.run(_load(url, clients, 2 * clients, body))  # Compiles this load's batch shapes.
      start = time.perf_counter()
      latencies = asyncio.run(_load(url, clients, _REQUESTS.value, body))
      seconds = time.perf_counter() - start
      print(json.dumps({
          'clients': clients, 'requests': len(latencies),
          'requests_per_sec': len(latencies) / seconds,
          'tokens_per_sec': len(latencies) * _NEW_TOKENS.value / seconds,
          'latency_p50_s': float(np.percentile(latencies, 50)),
          'latency_p99_s': float(np.percentile(latencies, 99)),
          'prompt_len': _PROMPT_LEN.value, 'new_tokens': _NEW_TOKENS.value,
          'max_batch': _MAX_BATCH.value, 'device': jax.devices()[0].device_kind}), flush=True)


if __name__ == '__main__':
  app.run(main)
