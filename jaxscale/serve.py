"""An HTTP JSON server for a trained model: `python -m jaxscale.serve`.

  python -m jaxscale.serve --workdir workdirs/default [--port 8000]
  python -m jaxscale.serve --export exported/mlp        # a classifier's jax.export files

Endpoints (FastAPI on uvicorn):
- `POST /generate` (language models): JSON `prompt` (text, or a list of token ids),
  `max_new_tokens`, `temperature` (0 = greedy), `top_k`, `top_p`, `seed` -> `text`, `tokens`.
- `POST /classify` (classifiers): `inputs` (an image as nested lists [H, W, C], or a text),
  `top_k` -> `classes`: [{`class`, `probability`}], most likely first.
- `GET /health`: the model, the queue and how many batches and requests were served.

A request the model cannot take (a bad field, malformed JSON, an oversize prompt) gets a 400
whose JSON names the `field` and says what is wrong; a full queue gets a 503. Concurrent requests
are batched (up to `--max_batch`) by `jaxscale.inference.batcher`.
"""

import argparse

import uvicorn

from jaxscale.inference import backends
from jaxscale.inference.server import build_app


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m jaxscale.serve', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='A training run: serve its newest checkpoint.')
  source.add_argument('--export', help='A classifier exported by python -m jaxscale.export.')
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, default=8000)
  parser.add_argument('--max_batch', type=int, default=8, help='Requests run together at most.')
  parser.add_argument('--max_queue', type=int, default=64, help='Waiting requests; more get 503.')
  parser.add_argument('--max_prompt_tokens', type=int, default=512)
  parser.add_argument('--max_new_tokens', type=int, default=512)
  args = parser.parse_args(argv)
  limits = dict(max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens)
  backend = (backends.from_workdir(args.workdir, **limits) if args.workdir
             else backends.from_export(args.export, **limits))
  app = build_app(backend, max_batch=args.max_batch, max_queue=args.max_queue)
  uvicorn.run(app, host=args.host, port=args.port)


if __name__ == '__main__':
  main()
