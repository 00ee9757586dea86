"""Plan a sweep from a spec file: one trainer run (config overrides) per (model size, tokens).

A spec file's `get_config()` returns (see configs/sweeps/tiny_isoflop.py for a full example):
  base_config       run config file the trainer loads, e.g. 'configs/default.py'
  overrides         'key=value' strings applied to every run (trainer `--config.key=value`)
  vocab_size        for counting parameters and FLOPs when the run config leaves it 0
  kind              'isoflop': for each of `budgets` (training FLOPs), `sizes_per_budget` model
                    sizes spread over a factor `size_span` each side of the guess D = 
                    `tokens_per_param` * N; D = budget / (exact train FLOPs per token of the shape)
                    'grid': every target size in `model_sizes` with every token count in `tokens`
  size_count        'total' | 'non_embedding': which parameter count targets refer to
  shape             the `shapes.ShapeRule` mapping a target size to layers/width/heads/MLP
  warmup_fraction   warmup steps as a fraction of each run's steps
  evals_per_run     evaluations spread over each run (points for `collect --all-points`)
  cooldown.enabled  WSD trick: runs of one shape share a trunk and branch cooldowns off it
                    (`cooldown.py`); checkpoints every `cooldown.checkpoint_every_steps`
  vary              optional (config key, values) pairs: every run once per combination, named
                    with a suffix (e.g. `_learning_rate0.001`); default none
  multi             optional, default True: the launcher trains runs differing only in learning
                    rate, weight decay, seed or init scale in one program (`grouping.py`)...
  max_models_per_program  ...up to this many per program (default 16)
Steps per run are tokens / (batch_size * seq_len), rounded; the planned N, D and C are recorded.
"""

import itertools
import json
import math
import os
import sys

import numpy as np

from jaxscale.metrics import flops
from jaxscale.scaling.sweeps import cooldown, run_config, shapes

KINDS = ('isoflop', 'grid')


def plan(spec) -> dict:
  """The sweep record (what sweep.json holds): base config, spec, and one entry per run."""
  if spec.kind not in KINDS:
    raise ValueError(f'Sweep kind {spec.kind!r}; choose one of: {", ".join(KINDS)}.')
  base_path = os.path.abspath(spec.base_config)
  config = run_config.apply_overrides(run_config.load_config_file(base_path), spec.overrides)
  vocab_size = config.model.vocab_size or spec.vocab_size
  rule = shapes.ShapeRule.from_config(spec.shape)
  targets = _isoflop_targets(spec) if spec.kind == 'isoflop' else _grid_targets(spec)
  runs, seen = [], set()
  for target in targets:
    shape = shapes.shape_for_params(target['size'], config.model, vocab_size, rule,
                                    spec.size_count)
    run = planned_run(config, vocab_size, shape, target, spec)
    if run['name'] not in seen:  # Nearby target sizes can round to one shape.
      seen.add(run['name'])
      runs.append(run)
  if spec.cooldown.enabled:
    runs = cooldown.branch_runs(runs, spec.cooldown.checkpoint_every_steps,
                                config.optimizer.decay_fraction)
  runs = with_variants(runs, spec.get('vary', ()), config)
  return {'base_config': base_path, 'spec': spec.to_dict(), 'vocab_size': vocab_size,
          'python': sys.executable, 'runs': runs}


def write(sweep: dict, out_dir) -> None:
  """DIR/sweep.json plus, per run, DIR/runs/<name>/{overrides.json, command.sh}."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'sweep.json'), 'w') as f:
    json.dump(sweep, f, indent=1)
  for run in sweep['runs']:
    run_dir = os.path.join(out_dir, 'runs', run['name'])
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'overrides.json'), 'w') as f:
      json.dump(run['overrides'], f, indent=1)
    with open(os.path.join(run_dir, 'command.sh'), 'w') as f:
      f.write('#!/bin/sh\n' + ' '.join(command(sweep, run, run_dir)) + '\n')


def load(sweep_dir) -> dict:
  path = os.path.join(sweep_dir, 'sweep.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found; create it with `python -m jaxscale.scaling sweep`.')
  with open(path) as f:
    return json.load(f)


def command(sweep: dict, run: dict, workdir) -> list[str]:
  return [sweep['python'], '-m', 'jaxscale.main', f'--config={sweep["base_config"]}',
          f'--workdir={workdir}', *(f'--config.{override}' for override in run['overrides'])]


def with_variants(runs: list[dict], vary, config) -> list[dict]:
  """Each run once per combination of `vary`'s values, ((config key, values), ...), its name
  suffixed with them; a cooldown branch branches from its own variant's trunk."""
  if not vary:
    return runs
  if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
             and isinstance(pair[1], (tuple, list)) and pair[1] for pair in vary):
    raise ValueError(f'spec.vary={vary!r}: give (config key, (value, ...)) pairs, e.g. '
                     "(('optimizer.learning_rate', (1e-3, 3e-3)), ('seed', (0, 1))).")
  keys = [key for key, _ in vary]
  combos = []  # (values, overrides, name suffix)
  for combo in itertools.product(*(values for _, values in vary)):
    overrides = [f'{key}={value}' for key, value in zip(keys, combo)]
    run_config.apply_overrides(config, overrides)  # An unknown key or bad value fails here.
    suffix = ''.join(f'_{key.split(".")[-1]}{_tag(value)}' for key, value in zip(keys, combo))
    combos.append((combo, overrides, suffix))
  planned = []
  for run in runs:  # A run's variants side by side: the launcher groups them in this order.
    for combo, overrides, suffix in combos:
      variant = {**run, 'name': run['name'] + suffix, 'vary': dict(zip(keys, combo)),
                 'overrides': list(run['overrides']) + overrides}
      if 'branch_from' in run:
        variant['branch_from'] = {**run['branch_from'], 'run': run['branch_from']['run'] + suffix}
      planned.append(variant)
  names = [run['name'] for run in planned]
  if len(set(names)) != len(names):
    raise ValueError(f'spec.vary={vary!r} gives two runs one name (values equal to 6 digits); '
                     'make the values differ more.')
  return planned


def _tag(value) -> str:
  return f'{value:g}' if isinstance(value, (int, float)) and not isinstance(value, bool) else str(
      value)


def _isoflop_targets(spec):
  spreads = np.geomspace(1 / spec.size_span, spec.size_span, spec.sizes_per_budget)
  for budget in spec.budgets:
    centre = math.sqrt(budget / (6 * spec.tokens_per_param))  # C = 6 N D with D = r N.
    for spread in spreads:
      yield {'budget': float(budget), 'size': centre * spread}


def _grid_targets(spec):
  for size in spec.model_sizes:
    for tokens in spec.tokens:
      yield {'budget': None, 'size': float(size), 'tokens': float(tokens)}


def planned_run(config, vocab_size, shape, target, spec) -> dict:
  """One run of `shape` for target {'budget': FLOPs} or {'budget': None, 'tokens': D}."""
  model = shapes.with_shape(config.model, shape)
  seq_len, batch_size = config.dataset.seq_len, config.batch_size
  per_token = flops.train_flops_per_token(model, seq_len, vocab_size)
  tokens = target['budget'] / per_token if target['budget'] else target['tokens']
  steps = max(1, round(tokens / (batch_size * seq_len)))
  total, non_embedding = flops.count_params(model, vocab_size)
  eval_every = max(1, steps // max(1, spec.evals_per_run))
  overrides = list(spec.overrides) + [f'model.{key}={value}' for key, value in shape.items()] + [
      f'num_train_steps={steps}',
      f'optimizer.warmup_steps={max(1, round(spec.warmup_fraction * steps))}',
      f'eval_every_steps={eval_every}',
      f'log_every_steps={min(config.log_every_steps, eval_every)}',
      f'checkpoint_every_steps={eval_every}']
  tag = f'C{target["budget"]:.3g}' if target['budget'] else f'D{tokens:.3g}'
  return {
      'name': f'{tag}_L{shape["num_layers"]}_d{shape["d_model"]}'.replace('+', ''),
      'budget': target['budget'], 'target_size': target['size'], **shape,
      'N': total, 'N_nonembed': non_embedding, 'steps': steps,
      'D': steps * batch_size * seq_len, 'C': steps * batch_size * seq_len * per_token,
      'flops_per_token': per_token, 'overrides': overrides}
