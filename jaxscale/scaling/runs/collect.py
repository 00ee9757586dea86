"""Collect finished runs' workdirs into one table (CSV) for fitting.

One row per run from its summary.json, or with `all_points` one row per eval in its
metrics.jsonl (Approach 1 uses the whole curves). D = tokens_seen, C = flops_seen (exact training
FLOPs), loss = eval_loss (with its eval_loss_stderr and eval_documents), N = params_total,
N_nonembed = params_non_embedding, plus the run's size knobs from config.json and, from
sweep.json when there is one, the run's planned compute budget. Downstream metrics a run logged
(`config.lm_eval`: metrics.jsonl keys 'eval/<task>/<metric>') become columns of those names: the
final ones, or with `all_points` those of each eval's step.
"""

import glob
import json
import os

from jaxscale.scaling.runs import table as table_lib

# Transformer knobs, then the vision families' (ViT, ResNet, MLP); a run leaves others blank.
SIZE_KNOBS = ('num_layers', 'd_model', 'num_heads', 'mlp_dim', 'vocab_size', 'depth', 'width',
              'patch_size', 'hidden_dims')
COLUMNS = ('run', 'N', 'N_nonembed', 'D', 'C', 'loss', 'eval_loss_stderr', 'eval_documents',
           'step', 'budget', *SIZE_KNOBS, 'seq_len', 'batch_size', 'learning_rate', 'schedule',
           'dataset_min_loss')


def find_workdirs(root) -> dict[str, str]:
  """{run name: workdir}: the runs of root/sweep.json if present, else every dir under root
  that holds a config.json."""
  sweep_path = os.path.join(root, 'sweep.json')
  if os.path.exists(sweep_path):
    with open(sweep_path) as f:
      runs = json.load(f)['runs']
    return {run['name']: os.path.join(root, 'runs', run['name']) for run in runs}
  paths = sorted(glob.glob(os.path.join(root, '**', 'config.json'), recursive=True))
  return {os.path.relpath(os.path.dirname(path), root): os.path.dirname(path) for path in paths}


def collect(root, all_points=False) -> tuple[list[dict], list[str]]:
  """(rows, names of runs left out because they have not finished)."""
  budgets = _budgets(root)
  rows, unfinished = [], []
  for name, workdir in find_workdirs(root).items():
    summary = _read_json(os.path.join(workdir, 'summary.json'))
    if not summary or not summary.get('finished'):
      unfinished.append(name)
      continue
    base = {'run': name, 'budget': budgets.get(name, ''),
            'dataset_min_loss': _blank_if_none(summary.get('dataset_min_loss')),
            **_knobs(_read_json(os.path.join(workdir, 'config.json')))}
    downstream = _downstream_rows(workdir)
    points = _eval_rows(workdir) if all_points else [summary]
    final = downstream[max(downstream)] if downstream else {}
    rows.extend({**base, **_measured(point),
                 **(downstream.get(point['step'], {}) if all_points else final)}
                for point in points)
  return rows, unfinished


def write(rows, path) -> None:
  if not rows:
    raise ValueError('No finished runs to collect.')
  downstream = sorted({key for row in rows for key in row if key.startswith('eval/')})
  table_lib.write_csv(path, rows, [*COLUMNS, *downstream])


def _measured(point) -> dict:
  return {'N': point['params_total'], 'N_nonembed': point['params_non_embedding'],
          # Tokens for LMs, images for classifiers.
          'D': point['tokens_seen'] if 'tokens_seen' in point else point['examples_seen'],
          'C': point['flops_seen'], 'loss': point['eval_loss'],
          # The loss's standard error and the documents it was measured on (blank for runs
          # that predate them).
          'eval_loss_stderr': _blank_if_none(point.get('eval_loss_stderr')),
          'eval_documents': _blank_if_none(point.get('eval_documents')),
          'step': point['step']}


def _knobs(config) -> dict:
  model, dataset, optimizer = config['model'], config['dataset'], config['optimizer']
  return {**{knob: model.get(knob, '') for knob in SIZE_KNOBS}, 'seq_len': dataset['seq_len'],
          'batch_size': config['batch_size'], 'learning_rate': optimizer['learning_rate'],
          'schedule': optimizer['schedule']}


def _eval_rows(workdir) -> list[dict]:
  """Eval rows of metrics.jsonl (the last one per step, should a resumed run repeat a step)."""
  by_step = {}
  for row in _read_jsonl(os.path.join(workdir, 'metrics.jsonl')):
    if 'eval_loss' in row and row.get('step', 0) > 0:
      by_step[row['step']] = row
  return [by_step[step] for step in sorted(by_step)]


def _downstream_rows(workdir) -> dict[int, dict]:
  """{step: {'eval/<task>/<metric>': value}} of the lm-eval rows in metrics.jsonl."""
  by_step = {}
  for row in _read_jsonl(os.path.join(workdir, 'metrics.jsonl')):
    found = {key: value for key, value in row.items() if key.startswith('eval/')}
    if found:
      by_step.setdefault(row['step'], {}).update(found)
  return by_step


def _budgets(root) -> dict:
  path = os.path.join(root, 'sweep.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {run['name']: run['budget'] for run in json.load(f)['runs'] if run.get('budget')}


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_jsonl(path) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # A torn last line from a killed run.
  return rows


def _blank_if_none(value):
  return '' if value is None else value
