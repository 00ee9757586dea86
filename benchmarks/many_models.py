"""K tiny models in one vmapped program vs K separate trainer processes: wall time per model.

  python benchmarks/many_models.py --ks 1,4,16 --steps 200

The models are the markov IsoFLOP sweep's small shape (configs/sweeps/tiny_isoflop.py: 2 layers,
d_model 32, seq_len 64, batch 16) at K learning rates spread over 3e-3..3e-2. For each K it times
`python -m jaxscale.hparams multi` (one process, one program) and K sequential
`python -m jaxscale.main` processes (each run alone, as a sweep would launch them), start to
exit, and prints one JSON line per K: seconds per model each way, their ratio, and the largest
relative difference between a vmapped model's final eval loss and its solo run's. `--solo-ks`
limits the Ks whose solo runs are timed (solo cost per model does not depend on K).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ('dataset.name=markov', 'dataset.seq_len=64', 'batch_size=16', 'num_eval_batches=8',
             'model.num_layers=2', 'model.d_model=32', 'model.num_heads=4', 'model.mlp_dim=128',
             'optimizer.schedule=cosine', 'async_checkpointing=False')


def _overrides(steps: int) -> list[str]:
  return [f'--config.{o}' for o in OVERRIDES + (
      f'num_train_steps={steps}', f'optimizer.warmup_steps={max(1, steps // 20)}',
      f'eval_every_steps={steps}', f'log_every_steps={max(1, steps // 4)}',
      f'checkpoint_every_steps={steps}')]


def _timed(command) -> float:
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def _eval_loss(workdir) -> float:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)['eval_loss']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--ks', default='1,4,16')
  parser.add_argument('--solo-ks', default=None, help='Ks whose solo runs are timed (all).')
  parser.add_argument('--steps', type=int, default=200)
  args = parser.parse_args()
  ks = [int(k) for k in args.ks.split(',')]
  solo_ks = [int(k) for k in args.solo_ks.split(',')] if args.solo_ks else ks
  config = os.path.join(ROOT, 'configs', 'default.py')
  with tempfile.TemporaryDirectory() as root:
    for k in ks:
      rates = [float(r) for r in np.geomspace(3e-3, 3e-2, k)] if k > 1 else [1e-2]
      multi_dirs = [os.path.join(root, f'multi{k}_{i}') for i in range(k)]
      multi_seconds = _timed([
          sys.executable, '-m', 'jaxscale.hparams', 'multi', f'--config={config}',
          f'--workdirs={",".join(multi_dirs)}',
          f'--values=learning_rate={",".join(repr(r) for r in rates)}', *_overrides(args.steps)])
      row = {'K': k, 'steps': args.steps, 'multi_seconds_per_model': multi_seconds / k}
      if k in solo_ks:
        solo_seconds, differences = 0.0, []
        for i, rate in enumerate(rates):
          workdir = os.path.join(root, f'solo{k}_{i}')
          solo_seconds += _timed([sys.executable, '-m', 'jaxscale.main', f'--config={config}',
                                  f'--workdir={workdir}', *_overrides(args.steps),
                                  f'--config.optimizer.learning_rate={rate!r}'])
          differences.append(abs(_eval_loss(multi_dirs[i]) / _eval_loss(workdir) - 1))
        row.update({'solo_seconds_per_model': solo_seconds / k,
                    'speedup': solo_seconds / multi_seconds,
                    'max_relative_eval_loss_difference': max(differences)})
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
