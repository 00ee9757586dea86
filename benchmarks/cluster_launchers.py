"""Launchers and distributed search on one machine, each against its baseline in the same run.

1. A 4-run sweep (2 sizes x 2 learning rates: 2 multi programs) with `--launcher local
   --parallel 2`, then with `--launcher submitit-local --wait` (the slurm code path through
   submitit's local executor: a job array of 2 real subprocess jobs). Wall time of each, and
   whether their eval losses agree.
2. A search of --trials tiny trainer trials (20 steps each) with one worker, then with 3 workers
   sharing one journal storage: trials per minute of each.
On a machine with fewer cores than jobs or workers the ratios measure contention as much as the
launchers; the JSON says how many CPUs there were.

  python benchmarks/cluster_launchers.py [--trials 6] [--out DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SWEEP_SPEC = f'''
import ml_collections
from jaxscale.config import config_base

def get_config():
  c = config_base.load_config_file({os.path.join(REPO, 'configs', 'sweeps', 'tiny_isoflop.py')!r})
  c.base_config = {os.path.join(REPO, 'configs', 'default.py')!r}
  c.kind, c.model_sizes, c.tokens, c.evals_per_run = 'grid', (2e4, 4e4), (3e4,), 2
  c.vary = (('optimizer.learning_rate', (3e-3, 1e-2)),)
  return c
'''
SEARCH_SPEC = f'''
from jaxscale.config import config_base

def get_config():
  c = config_base.load_config_file({os.path.join(REPO, 'configs', 'sweeps', 'tiny_lr_search.py')!r})
  c.base_config = {os.path.join(REPO, 'configs', 'default.py')!r}
  c.overrides = tuple(c.overrides) + ('num_train_steps=20', 'eval_every_steps=10',
                                      'log_every_steps=10', 'checkpoint_every_steps=10')
  c.search.method, c.search.pruner = 'random', 'none'
  return c
'''


def _timed(command) -> float:
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return time.perf_counter() - start


def _losses(sweep_dir) -> list[float]:
  losses = []
  for name in sorted(os.listdir(os.path.join(sweep_dir, 'runs'))):
    with open(os.path.join(sweep_dir, 'runs', name, 'summary.json')) as f:
      losses.append(json.load(f)['eval_loss'])
  return losses


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--trials', type=int, default=6)
  parser.add_argument('--out', default=None, help='Working directory (default: a temporary one).')
  args = parser.parse_args()
  out = args.out or tempfile.mkdtemp(prefix='cluster_launchers_')
  os.makedirs(out, exist_ok=True)
  python = [sys.executable, '-m']
  with open(os.path.join(out, 'sweep_spec.py'), 'w') as f:
    f.write(SWEEP_SPEC)
  with open(os.path.join(out, 'search_spec.py'), 'w') as f:
    f.write(SEARCH_SPEC)
  local, jobs = os.path.join(out, 'sweep_local'), os.path.join(out, 'sweep_jobs')
  _timed(python + ['jaxscale.scaling', 'sweep', '--config', f'{out}/sweep_spec.py', '--out',
                   local])
  shutil.copytree(local, jobs)
  local_s = _timed(python + ['jaxscale.scaling', 'run', local, '--parallel', '2'])
  jobs_s = _timed(python + ['jaxscale.scaling', 'run', jobs, '--launcher', 'submitit-local',
                            '--wait'])
  print(json.dumps({'bench': 'sweep_4_runs', 'cpus': os.cpu_count(), 'local_parallel2_s':
                    round(local_s, 1), 'submitit_local_s': round(jobs_s, 1),
                    'ratio_submitit_over_local': round(jobs_s / local_s, 3),
                    'same_eval_losses': _losses(local) == _losses(jobs)}), flush=True)

  rates = {}
  for workers in (1, 3):
    directory = os.path.join(out, f'search_{workers}')
    seconds = _timed(python + ['jaxscale.hparams', 'search', f'{out}/search_spec.py', '--dir',
                               directory, '--storage', f'journal:{directory}/journal.log',
                               '--workers', str(workers), '--trials', str(args.trials)])
    rates[workers] = args.trials / seconds * 60
  print(json.dumps({'bench': 'search_trials_per_minute', 'cpus': os.cpu_count(),
                    'trials': args.trials, 'one_worker': round(rates[1], 2),
                    'three_workers': round(rates[3], 2),
                    'speedup': round(rates[3] / rates[1], 3)}), flush=True)


if __name__ == '__main__':
  main()
