"""`python -m jaxscale.evaluate --workdir W --tasks T1,T2 [--include_path DIR]`:
lm-evaluation-harness tasks on a run's newest checkpoint, in-process (the `jaxscale` lm-eval model); writes
W/lm_eval.json (lm-eval's results, plus requests/s) and prints each task's metrics.

The offline tasks in jaxscale/inference/lm_eval_tasks need no network (jaxscale_stdlib_next_line,
jaxscale_stdlib_perplexity); hub tasks (e.g. hellaswag) work where the hub can be reached.
`--include_path` adds a folder of your own task YAMLs, as in lm-eval.
"""

import argparse
import json
import sys
import time

from jaxscale.core import paths


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.evaluate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='A training run with a checkpoint.')
  parser.add_argument('--tasks', required=True, help='Comma-separated lm-eval task names.')
  parser.add_argument('--include_path', help='A folder of your own lm-eval task YAMLs.')
  parser.add_argument('--model_args', default='',
                      help='More jaxscale model_args, e.g. batch_size=32,max_length=512,step=250.')
  parser.add_argument('--limit', type=float, help='Examples per task (or a fraction), for a '
                      'quick look; the scores are then not comparable.')
  parser.add_argument('--num_fewshot', type=int)
  parser.add_argument('--out', help='Where to write the results (default WORKDIR/lm_eval.json).')
  args = parser.parse_args(argv)
  workdir = paths.resolve(args.workdir)
  tasks = [task.strip() for task in args.tasks.split(',') if task.strip()]
  try:
    # JAX, TensorFlow and lm-eval load after argparse, so --help and usage errors stay quick.
    from jaxscale.inference import lm_eval_model  # noqa: PLC0415
    lm = lm_eval_model.JaxscaleLM.create_from_arg_string(
        ','.join(filter(None, [f'workdir={workdir}', args.model_args])))
    start = time.perf_counter()
    results = lm_eval_model.evaluate(lm, tasks, include_path=args.include_path,
                                     limit=args.limit, num_fewshot=args.num_fewshot)
  except (ValueError, FileNotFoundError) as error:
    print(f'error: {" ".join(str(error).split())}', file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  requests = sum(n['effective'] for n in results.get('n-samples', {}).values())
  results['jaxscale'] = {'workdir': str(workdir), 'seconds': seconds,
                         'metrics': lm_eval_model.metric_rows(results)}
  out = args.out or str(workdir / 'lm_eval.json')
  with open(out, 'w') as f:
    json.dump(results, f, indent=1)
  print(json.dumps({'out': out, 'documents': requests, 'seconds': round(seconds, 1),
                    **results['jaxscale']['metrics']}, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
