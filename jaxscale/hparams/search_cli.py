"""`python -m jaxscale.hparams search SPEC --dir DIR [--trials N]`: run or resume a search.

Progress goes to stderr (one line per trial started, pruned, failed or finished); the final
summary (trial counts by state, the best trial) prints as JSON on stdout. Rerun the same command
after a kill to resume.

Distributed (`search_workers`): `--workers N` starts N worker processes here, and `--worker`
joins as one more worker from any machine that reaches the same `--storage` (sqlite:///PATH,
postgresql://..., journal:PATH on a shared filesystem). The budget holds exactly across workers,
and a dead worker's trial is failed after `--grace-period` seconds without a heartbeat and run
again with its parameters, resuming its checkpoints.
"""

import argparse
import json
import subprocess
import sys

from jaxscale.core import paths
from jaxscale.hparams import search, search_workers
from jaxscale.scaling.sweeps import run_config


def _parser():
  parser = argparse.ArgumentParser(prog='python -m jaxscale.hparams search', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('spec', type=paths.resolve_str,
                      help='Sweep spec with a search section, e.g. configs/sweeps/tiny_lr_search.py.')
  parser.add_argument('--dir', type=paths.resolve_str, required=True,
                      help='Search directory (created; holds study.db and trials/).')
  parser.add_argument('--trials', type=int, help='Trials to finish (default: spec.search.num_trials).')
  parser.add_argument('--allow_test_objective', action='store_true',
                      help="Allow an eval objective measured on the test split "
                           "(dataset.eval_split='test'); refused by default, since tuning on "
                           'test leaks it into the reported number.')
  parser.add_argument('--storage', metavar='URL',
                      help='Shared study storage: sqlite:///PATH, postgresql://USER@HOST/DB or '
                           'journal:PATH (default with --workers/--worker: DIR/study.db).')
  parser.add_argument('--workers', type=int, metavar='N',
                      help='Run N worker processes here, sharing the storage.')
  parser.add_argument('--worker', action='store_true',
                      help='Run as one worker of a shared search (start one per process/machine).')
  parser.add_argument('--worker-id', type=int,
                      help="Seeds this worker's sampler (default: random, so workers differ).")
  parser.add_argument('--heartbeat-interval', type=int, default=search_workers.HEARTBEAT_INTERVAL_S,
                      metavar='S', help='Seconds between a running trial\'s heartbeats.')
  parser.add_argument('--grace-period', type=int, default=search_workers.GRACE_PERIOD_S,
                      metavar='S', help='A trial silent this long is failed and retried.')
  return parser


def _worker_command(args, worker_id: int) -> list[str]:
  command = [sys.executable, '-m', 'jaxscale.hparams', 'search', args.spec, '--dir', args.dir,
             '--storage', args.storage, '--worker', '--worker-id', str(worker_id),
             '--heartbeat-interval', str(args.heartbeat_interval),
             '--grace-period', str(args.grace_period)]
  command += ['--allow_test_objective'] if args.allow_test_objective else []
  return command + (['--trials', str(args.trials)] if args.trials else [])


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.workers is not None and args.workers < 1:
      raise ValueError(f'--workers {args.workers}: give a positive number of worker processes.')
    spec = run_config.load_config_file(args.spec)
    if 'search' not in spec:
      raise ValueError(f'{args.spec} has no `search` section; see configs/sweeps/tiny_lr_search.py.')
    if args.workers or args.worker or args.storage:
      args.storage = args.storage or search_workers.default_storage(args.dir)
      search_workers.open_storage(args.storage)  # A bad URL stops here, before any worker starts.
    if args.workers:
      if not args.allow_test_objective:  # Refused here, before any worker starts.
        search.check_not_test(search.with_defaults(spec).search.objective,
                              search.configured_eval_split(spec))
      workers = [subprocess.Popen(_worker_command(args, i), stdout=subprocess.DEVNULL)
                 for i in range(args.workers)]
      codes = [worker.wait() for worker in workers]
      summary = search.run_worker(spec, args.dir, args.storage, args.trials, worker_id=None,
                                  heartbeat_interval=args.heartbeat_interval,
                                  grace_period=args.grace_period,
                                  allow_test_objective=args.allow_test_objective
                                  ) if not any(codes) else None
      if summary is None:
        raise ValueError(f'worker exit statuses {codes}; their errors are above.')
    elif args.worker or args.storage:
      summary = search.run_worker(spec, args.dir, args.storage, args.trials, args.worker_id,
                                  heartbeat_interval=args.heartbeat_interval,
                                  grace_period=args.grace_period,
                                  allow_test_objective=args.allow_test_objective)
    else:
      summary = search.run_search(spec, args.dir, args.trials,
                                  allow_test_objective=args.allow_test_objective)
  except (ValueError, KeyError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=1))
  return 0
