"""lm-eval requests/s on a run: the in-process `jaxscale` model vs lm-eval's `local-completions`
through `jaxscale.serve` on localhost (the same tasks, scores and batch size), as JSON.

  python benchmarks/lm_eval_throughput.py --workdir workdirs/default \
      [--tasks jaxscale_stdlib_next_line,jaxscale_stdlib_perplexity] [--limit 50] [--batch_size 32]

Each route first runs a few examples (compiling its shapes), then the timed run; the server runs
in this process (uvicorn in a thread, `--max_batch` = batch size). One row per route, then the
ratio of their requests/s and whether their scores agree.
"""

import argparse
import json
import os
import time

from lm_eval.api.registry import get_model

from jaxscale.inference import backends, lm_eval_model, server


def _counting(lm) -> dict:
  """Counts the requests lm-eval hands `lm` (loglikelihood, rolling, generation)."""
  counts = {'requests': 0}
  for name in ('loglikelihood', 'loglikelihood_rolling', 'generate_until'):
    method = getattr(lm, name)

    def wrapped(requests, *args, _method=method, **kwargs):
      counts['requests'] += len(requests)
      return _method(requests, *args, **kwargs)
    setattr(lm, name, wrapped)
  return counts


def _timed(route: str, lm, tasks, limit) -> dict:
  lm_eval_model.evaluate(lm, tasks, limit=2, bootstrap_iters=0)  # Compile.
  counts = _counting(lm)
  start = time.perf_counter()
  results = lm_eval_model.evaluate(lm, tasks, limit=limit, bootstrap_iters=0)
  seconds = time.perf_counter() - start
  return {'route': route, 'requests': counts['requests'], 'seconds': round(seconds, 2),
          'requests_per_s': round(counts['requests'] / seconds, 2),
          'metrics': lm_eval_model.metric_rows(results)}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', default='workdirs/default')
  parser.add_argument('--tasks', default='jaxscale_stdlib_next_line,jaxscale_stdlib_perplexity')
  parser.add_argument('--limit', type=int, default=50)
  parser.add_argument('--batch_size', type=int, default=32)
  args = parser.parse_args()
  tasks = args.tasks.split(',')
  ours = lm_eval_model.JaxscaleLM(workdir=args.workdir, batch_size=args.batch_size)
  in_process = _timed('in_process', ours, tasks, args.limit)
  print(json.dumps(in_process), flush=True)
  max_length = ours.max_length
  backend = backends.from_workdir(args.workdir, max_prompt_tokens=max_length + 2,
                                  max_new_tokens=256)
  app = server.build_app(backend, max_batch=args.batch_size, max_queue=4 * args.batch_size,
                         model_id='run')
  with server.running_server(app) as url:
    theirs = get_model('local-completions').create_from_arg_string(
        f'model=run,base_url={url}/v1/completions,tokenizer_backend=remote,'
        f'max_length={max_length + 2},batch_size={args.batch_size}')
    served = _timed('local_completions', theirs, tasks, args.limit)
  print(json.dumps(served), flush=True)
  agree = all(abs(served['metrics'][k] - v) <= 1e-5 * max(abs(v), 1)
              for k, v in in_process['metrics'].items())
  print(json.dumps({'summary': 'in_process_over_server_requests_per_s',
                    'ratio': round(in_process['requests_per_s'] / served['requests_per_s'], 2),
                    'scores_agree': agree, 'cpu_count': os.cpu_count()}))


if __name__ == '__main__':
  main()
