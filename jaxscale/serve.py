"""`python -m jaxscale.serve --workdir W` (or `--export DIR`): an HTTP JSON server for a trained
model; `jaxscale.inference.server` lists the endpoints.
"""

import argparse
import pathlib

import uvicorn

from jaxscale.inference import backends, server as server_lib
from jaxscale.inference.server import build_app


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m jaxscale.serve', description=server_lib.__doc__,
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
  parser.add_argument('--model_name', help='The model id on /v1/models (default: the workdir or '
                      'export directory name).')
  args = parser.parse_args(argv)
  limits = dict(max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens)
  backend = (backends.from_workdir(args.workdir, **limits) if args.workdir
             else backends.from_export(args.export, **limits))
  model_id = args.model_name or pathlib.PurePath(args.workdir or args.export).name
  app = build_app(backend, max_batch=args.max_batch, max_queue=args.max_queue, model_id=model_id)
  uvicorn.run(app, host=args.host, port=args.port)


if __name__ == '__main__':
  main()
