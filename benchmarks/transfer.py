"""What pretraining buys a finetune, as JSON lines: one per run and seed, then a summary line.

  python benchmarks/transfer.py --tasks=text --seeds=3           # the configs' budgets
  python benchmarks/transfer.py --tasks=image --fractions=0.1 --steps=50 --pretrain_steps=100

Tasks: 'text' (configs/lm_pretrain.py, a decoder LM on the standard library with a byte-level
BPE learned from its train split, then configs/lm_finetune.py on stdlib_packages, mean-pooled)
and 'image'
(configs/resnet_digits_pretrain.py on digits 0-4, then configs/resnet_digits_finetune.py on digits
5-9; `--image_model=vit` for the configs/vit_digits_* pair). The text task first trains its
tokenizer into <out>/text/tokenizer (`jaxscale.data.train_tokenizer`, seconds; the same files for
the same split and size; a line with task, tokenizer, dataset, vocab_size and wall_s) and every
run of the task uses it. Each task pretrains once, shared by
every seed: a finished pretrain workdir under --out is reused only if its fingerprint (a hash of
the resolved pretrain config, of its tokenizer's files and of every jaxscale/**/*.py) matches,
else it is trained again.
Then, for each seed 0..--seeds-1 (`config.seed`: the head's init, the data order; the label subset
is fixed by the fraction), it finetunes with the same budget (steps) as:
- 'full' from the pretrained parameters and from scratch (`init_from.workdir=''`, the same
  recipe), at each label fraction (`dataset.train_fraction`);
- 'frozen' (everything but the head frozen) and 'lora' (low-rank adapters, where the config has a
  `lora` section; else a row saying it is skipped), pretrained, at --peft_fraction;
- images only: 'full' again with augmentation (1-pixel pad-and-crop shifts), both inits.
A row: task, mode, init ('pretrained' | 'scratch'), train_fraction, augment, seed, accuracy and
macro_f1 (eval, from summary.json), params_trainable, checkpoint_bytes (the newest
checkpoints/<step> directory), steps_per_sec (median of the logged intervals) and wall_s (the
whole run: build, compile, train, eval, save). The summary line holds, per task and fraction, the
pretrained-minus-scratch gap of the full finetunes (same seed), mean and sample std over seeds of
macro_f1 and accuracy; under 'runs', each (task, mode, init, fraction, augment)'s mean and std
over seeds; and the benchmark's wall_s and cpu_s (this process's user + system CPU time). Runs go
in-process through `loop.run`, one after another, in workdirs under --out (each finetune workdir,
<mode>_<init>_f<fraction>[_aug]_s<seed>, is cleared first), sharing a persistent compilation cache
(--compile_cache), so wall_s of a row after the first of its shape is mostly training.
"""

import functools
import hashlib
import json
import pathlib
import resource
import shutil
import statistics
import sys
import time

from absl import app, flags, logging

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # Run as a script from anywhere.

_OUT = flags.DEFINE_string('out', '/tmp/jaxscale_transfer_bench', 'Directory for the workdirs.')
_TASKS = flags.DEFINE_list('tasks', ['text', 'image'], 'Tasks to run: text, image.')
_FRACTIONS = flags.DEFINE_list('fractions', ['0.01', '0.1', '1.0'],
                               'Label fractions (dataset.train_fraction) of the finetunes.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Finetune steps of every row; 0: the config\'s.')
_PRETRAIN_STEPS = flags.DEFINE_integer('pretrain_steps', 0, 'Pretrain steps; 0: the config\'s.')
_MODES = flags.DEFINE_list('modes', ['full', 'frozen', 'lora'],
                           'Finetune modes: full (both inits), frozen, lora.')
_PEFT_FRACTION = flags.DEFINE_float('peft_fraction', 0.0,
                                    'Label fraction of the frozen and LoRA rows; 0: the largest.')
_AUGMENT = flags.DEFINE_bool('augment', True, 'Image task: also the rows with augmentation.')
_COMPILE_CACHE = flags.DEFINE_string(
    'compile_cache', 'DEFAULT', 'Persistent XLA compilation cache shared by the runs (rows of one '
    'task compile the same programs); DEFAULT: <out>/xla_cache; empty: none.')
_IMAGE_MODEL = flags.DEFINE_enum('image_model', 'resnet', ['resnet', 'vit'],
                                  'Image task: configs/<image_model>_digits_{pretrain,finetune}.py.')
_LORA_RANK = flags.DEFINE_integer('lora_rank', 8, 'lora.rank of the LoRA rows.')
_LORA_ALPHA = flags.DEFINE_float('lora_alpha', 16.0, 'lora.alpha of the LoRA rows.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Finetune seeds 0..N-1 (config.seed: init and data '
                              'order); every finetune row runs once per seed, the pretrain once.')

TASKS = {
    # lora_targets: every matmul/conv weight of the backbone (config.lora.targets regexes).
    # tokenizer: the BPE the text configs read (their dataset.tokenizer), trained here.
    'text': dict(pretrain='lm_pretrain', finetune='lm_finetune', augment=None,
                 lora_targets=('qkv', 'out_HxKxD', 'mlp_in', 'mlp_out'),
                 tokenizer=dict(dataset='python_stdlib', vocab_size=4096)),
    'image': dict(pretrain='{model}_digits_pretrain', finetune='{model}_digits_finetune',
                  augment={'dataset.crop': 'pad_and_crop', 'dataset.crop_padding': 1},
                  lora_targets=(r'conv\.kernel', 'qkv', 'out', 'mlp')),
}
# Stored in a finished pretrain workdir; a run without the current one is pretrained again.
FINGERPRINT_FILE = 'pretrain_fingerprint.txt'
GROUP_KEYS = ('task', 'mode', 'init', 'train_fraction', 'augment')
METRICS = ('macro_f1', 'accuracy')
# Every parameter but the classifier (head_DxK and head_bias_K; a ResNet's head.kernel, head.bias).
FROZEN_BACKBONE = ('^(?!head)',)


def load_config(name: str, overrides: dict):
  """configs/<name>.py's get_config() with dotted-key overrides (existing keys only)."""
  from jaxscale.config import config_base  # noqa: PLC0415  (after the import path is set)
  return config_base.set_existing_keys(
      config_base.load_config_file(ROOT / 'configs' / f'{name}.py'), overrides, name=name)


def budget(config, steps: int) -> dict:
  """Overrides that set num_train_steps (0 keeps the config's), with warmup kept below it."""
  if not steps:
    return {}
  return {'num_train_steps': steps,
          'optimizer.warmup_steps': min(config.optimizer.warmup_steps, steps // 5)}


def checkpoint_bytes(workdir: pathlib.Path) -> int | None:
  steps = [p for p in (workdir / 'checkpoints').glob('*') if p.is_dir() and p.name.isdigit()]
  if not steps:
    return None
  newest = max(steps, key=lambda p: int(p.name))
  return sum(f.stat().st_size for f in newest.rglob('*') if f.is_file())


def steps_per_sec(workdir: pathlib.Path) -> float | None:
  """Median over the logged intervals, the first (input pipeline warm-up) left out if others."""
  path = workdir / 'metrics.jsonl'
  rates = [row['steps_per_sec'] for row in map(json.loads, path.read_text().splitlines())
           if isinstance(row.get('steps_per_sec'), (int, float))] if path.exists() else []
  return statistics.median(rates[1:] or rates) if rates else None


def train_row(name: str, overrides: dict, workdir: pathlib.Path, *, clear: bool = True) -> dict:
  """Trains configs/<name>.py with `overrides` in `workdir`; the row's measured fields."""
  from jaxscale.train import loop  # noqa: PLC0415  (after absl has parsed the flags)
  if clear and workdir.exists():
    shutil.rmtree(workdir)
  config = load_config(name, overrides)
  start = time.perf_counter()
  summary = loop.run(config, str(workdir))
  wall_s = time.perf_counter() - start
  return {'accuracy': summary.get('eval_accuracy'), 'macro_f1': summary.get('eval_macro_f1'),
          'eval_loss': summary.get('eval_loss'),
          'params_trainable': summary.get('params_trainable'),
          'checkpoint_bytes': checkpoint_bytes(workdir), 'steps_per_sec': steps_per_sec(workdir),
          'wall_s': round(wall_s, 2)}


def emit(row: dict):
  print(json.dumps(row), flush=True)


def source_digest() -> str:
  """A content hash of the code a pretrain run depends on: every jaxscale/**/*.py."""
  digest = hashlib.sha256()
  for path in sorted((ROOT / 'jaxscale').rglob('*.py')):
    digest.update(path.relative_to(ROOT).as_posix().encode() + b'\0' + path.read_bytes())
  return digest.hexdigest()


def tokenizer_digest(config) -> str:
  """A content hash of the run's `hf:` tokenizer files ('' for other tokenizers)."""
  from jaxscale.data import hf_tokenizer  # noqa: PLC0415
  directory = hf_tokenizer.hf_dir(config.dataset.get('tokenizer', 'byte'))
  if directory is None:
    return ''
  digest = hashlib.sha256()
  for name in hf_tokenizer.FILES:
    path = pathlib.Path(directory) / name
    digest.update(name.encode() + b'\0' + (path.read_bytes() if path.exists() else b''))
  return digest.hexdigest()


def fingerprint(config) -> str:
  """What makes a finished pretrain run reusable: its resolved config, its tokenizer's files
  and the code's content."""
  return hashlib.sha256(f'{config.to_json(sort_keys=True)}\0{tokenizer_digest(config)}\0'
                        f'{source_digest()}'.encode()).hexdigest()


def train_tokenizer(task: str, spec: dict, out: pathlib.Path) -> dict:
  """Trains the task's tokenizer into <out>/<task>/tokenizer; the config overrides that make its
  runs use it ({} for a task without one)."""
  if not spec.get('tokenizer'):
    return {}
  from jaxscale.data import train_tokenizer as train_tokenizer_lib  # noqa: PLC0415
  directory = out / task / 'tokenizer'
  start = time.perf_counter()
  train_tokenizer_lib.train_on_dataset(spec['tokenizer']['dataset'],
                                       spec['tokenizer']['vocab_size'], directory)
  emit({'task': task, 'tokenizer': str(directory), **spec['tokenizer'],
        'wall_s': round(time.perf_counter() - start, 2)})
  return {'dataset.tokenizer': f'hf:{directory}'}


def pretrain(task: str, spec: dict, out: pathlib.Path, shared: dict) -> pathlib.Path:
  """The task's pretrain workdir: reused only if it finished with this config, tokenizer and
  code. `shared`: overrides of every run of the task."""
  workdir = out / task / spec['pretrain']
  base = {'task': task, 'mode': 'pretrain', 'init': 'scratch', 'train_fraction': 1.0,
          'augment': False}
  overrides = {**shared, **budget(load_config(spec['pretrain'], shared), _PRETRAIN_STEPS.value)}
  expected = fingerprint(load_config(spec['pretrain'], overrides))
  summary_path, stamp = workdir / 'summary.json', workdir / FINGERPRINT_FILE
  if summary_path.exists() and stamp.exists() and stamp.read_text().strip() == expected:
    summary = json.loads(summary_path.read_text())
    emit({**base, 'accuracy': summary.get('eval_accuracy'),
          'macro_f1': summary.get('eval_macro_f1'), 'eval_loss': summary.get('eval_loss'),
          'params_trainable': summary.get('params_trainable'),
          'checkpoint_bytes': checkpoint_bytes(workdir), 'steps_per_sec': steps_per_sec(workdir),
          'wall_s': 0.0, 'reused': True, 'fingerprint': expected})
    return workdir
  if workdir.exists():  # Another config or older code (or unfinished): never reused.
    logging.info('Pretraining again: %s does not match this config and code.', workdir)
  row = train_row(spec['pretrain'], overrides, workdir)  # Clears the workdir first.
  stamp.write_text(expected + '\n')  # Only once the run has finished.
  emit({**base, **row, 'reused': False, 'fingerprint': expected})
  return workdir


def finetune(task: str, spec: dict, out: pathlib.Path, pretrained: pathlib.Path, *, mode: str,
             init: str, fraction: float, augment: bool, seed: int, results: list, shared: dict):
  config = load_config(spec['finetune'], shared)
  overrides = {**shared, **budget(config, _STEPS.value), 'dataset.train_fraction': fraction,
               'seed': seed,
               'init_from.workdir': str(pretrained) if init == 'pretrained' else ''}
  if augment:
    overrides.update(spec['augment'])
  if mode == 'frozen':
    overrides['optimizer.frozen'] = FROZEN_BACKBONE
  elif mode == 'lora':
    overrides.update({'lora.rank': _LORA_RANK.value, 'lora.alpha': _LORA_ALPHA.value,
                      'lora.targets': spec['lora_targets'],
                      # Adapters start at zero: they need a larger step than a full finetune.
                      'optimizer.learning_rate': 10 * config.optimizer.learning_rate})
  row = {'task': task, 'mode': mode, 'init': init, 'train_fraction': fraction, 'augment': augment,
         'seed': seed}
  workdir = out / task / f'{mode}_{init}_f{fraction:g}{"_aug" if augment else ""}_s{seed}'
  try:
    row.update(train_row(spec['finetune'], overrides, workdir))
  except Exception as e:  # noqa: BLE001  (one failed row is reported; the others still run)
    logging.exception('Row %s failed.', row)
    row['error'] = f'{type(e).__name__}: {str(e)[:500]}'
  results.append(row)
  emit(row)


def has_lora() -> bool:
  from jaxscale.config import config_base  # noqa: PLC0415
  return 'lora' in config_base.get_base_config()


def mean_std(values: list) -> dict:
  """n, mean and sample std (None for one value) of the values that are not None."""
  values = [v for v in values if v is not None]
  if not values:
    return {'n': 0, 'mean': None, 'std': None}
  return {'n': len(values), 'mean': round(statistics.fmean(values), 4),
          'std': round(statistics.stdev(values), 4) if len(values) > 1 else None}


def run_stats(results: list) -> list[dict]:
  """Per (task, mode, init, train_fraction, augment): macro_f1 and accuracy over the seeds."""
  groups = {}
  for r in results:
    if 'error' not in r:
      groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
  return [{**dict(zip(GROUP_KEYS, key)), 'seeds': sorted(r['seed'] for r in rows),
           **{f'{metric}_{stat}': value for metric in METRICS
              for stat, value in mean_std([r.get(metric) for r in rows]).items() if stat != 'n'}}
          for key, rows in groups.items()]


def gaps(results: list, task: str, augment: bool) -> dict[str, dict]:
  """{fraction: pretrained minus scratch (same seed) of the full finetunes, mean and std over
  seeds, for macro_f1 and accuracy}."""
  by_run = {(r['init'], r['train_fraction'], r['seed']): r for r in results
            if r['task'] == task and r['mode'] == 'full' and r['augment'] == augment
            and 'error' not in r}
  out = {}
  for (init, fraction, seed), row in sorted(by_run.items(), key=lambda item: item[0][1:]):
    scratch = by_run.get(('scratch', fraction, seed))
    if init != 'pretrained' or scratch is None:
      continue
    for metric in METRICS:
      if row.get(metric) is not None and scratch.get(metric) is not None:
        out.setdefault(f'{fraction:g}', {}).setdefault(metric, []).append(
            row[metric] - scratch[metric])
  return {fraction: {f'{metric}_{stat}': value for metric, diffs in per_metric.items()
                     for stat, value in mean_std(diffs).items()}
          for fraction, per_metric in out.items()}


def main(argv):
  del argv
  unknown = set(_TASKS.value) - set(TASKS)
  if unknown:
    raise app.UsageError(f'--tasks: unknown {sorted(unknown)}; choose from {sorted(TASKS)}.')
  fractions = [float(f) for f in _FRACTIONS.value]
  peft_fraction = _PEFT_FRACTION.value or max(fractions)
  out = pathlib.Path(_OUT.value)
  cache = str(out / 'xla_cache') if _COMPILE_CACHE.value == 'DEFAULT' else _COMPILE_CACHE.value
  if cache:
    import jax  # noqa: PLC0415
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  if _SEEDS.value < 1:
    raise app.UsageError(f'--seeds={_SEEDS.value}: must be at least 1.')
  seeds = list(range(_SEEDS.value))
  results, summary = [], {'summary': 'pretrained_minus_scratch', 'seeds': seeds}
  start = time.perf_counter()
  for task in _TASKS.value:
    spec = {k: v.format(model=_IMAGE_MODEL.value) if isinstance(v, str) else v
            for k, v in TASKS[task].items()}
    emit({'task': task, 'pretrain_config': spec['pretrain'], 'finetune_config': spec['finetune'],
          'lora_available': has_lora()})
    shared = train_tokenizer(task, spec, out)
    pretrained = pretrain(task, spec, out, shared)
    for seed in seeds:
      run = functools.partial(finetune, task, spec, out, pretrained, seed=seed, results=results,
                              shared=shared)
      if 'full' in _MODES.value:
        for fraction in fractions:
          for init in ('pretrained', 'scratch'):
            run(mode='full', init=init, fraction=fraction, augment=False)
      if 'frozen' in _MODES.value:
        run(mode='frozen', init='pretrained', fraction=peft_fraction, augment=False)
      if 'lora' in _MODES.value:
        if has_lora():
          run(mode='lora', init='pretrained', fraction=peft_fraction, augment=False)
        elif seed == seeds[0]:
          emit({'task': task, 'mode': 'lora', 'init': 'pretrained',
                'train_fraction': peft_fraction, 'augment': False,
                'skipped': 'config_base has no lora section'})
      if _AUGMENT.value and spec['augment'] and 'full' in _MODES.value:
        for fraction in fractions:
          for init in ('pretrained', 'scratch'):
            run(mode='full', init=init, fraction=fraction, augment=True)
    summary[task] = gaps(results, task, augment=False)
    if _AUGMENT.value and spec['augment']:
      summary[f'{task}_augment'] = gaps(results, task, augment=True)
  summary['runs'] = run_stats(results)
  usage = resource.getrusage(resource.RUSAGE_SELF)
  summary['wall_s'] = round(time.perf_counter() - start, 1)
  summary['cpu_s'] = round(usage.ru_utime + usage.ru_stime, 1)
  emit(summary)
  if any('error' in r for r in results):
    raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
