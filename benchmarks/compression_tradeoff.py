"""Size and speed against accuracy for distillation, quantization and pruning, as JSON lines.

  python benchmarks/compression.py                                   # both tasks, ~15 min on 2 cores
  python benchmarks/compression.py --tasks=digits --rows=baseline,ptq,qat --steps=100
  python benchmarks/compression.py --png=benchmarks/results/compression.png

Tasks: 'digits' (an MLP on the embedded digits, configs/mlp_digits.py) and 'lm' (the byte-level
LM of configs/default.py, at a small step budget). Every row trains in-process through
`loop.run`, for the same number of steps, in a workdir under --out (cleared first):
- baseline: the student model, float, trained alone;
- distill: the same student distilled from a bigger model (`config.distill.*`), which trains
  first (row 'teacher');
- ptq: the baseline quantized after training by Qwix (`jaxscale.inference.ptq`): int8 weights with
  int8 activations (w8a8), int8 weights only (w8), int4 weights only (w4);
- qat: the student trained with quantization-aware training (w8a8), then quantized to int8;
- prune: the student trained with gradual magnitude pruning (`config.pruning.*`) to 50, 80 and
  90% sparsity.
A row: task, row, params, bytes (stored size: integer weights at their bit width with their
scales; a pruned model dense, and `sparse_bytes` with a bitmask of its non-zeros), eval_accuracy
(digits) or eval_bits_per_byte (lm), latency_s (the best of 20 timed calls of the compiled eval
step on one eval batch, CPU; a quantized row's step quantizes the float weights it loads, as
Qwix does on load) and wall_s. A row whose config keys this checkout lacks prints
`skipped` with the reason. --png draws accuracy (bits per byte) against bytes.
"""

import json
import pathlib
import shutil
import sys
import time

from absl import app, flags, logging

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Libraries probe for a `compression` module (the standard library's, from Python 3.14): keep this
# script's own directory off the path so they do not import this file.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or '.').resolve() != ROOT / 'benchmarks']
sys.path.insert(0, str(ROOT))  # Run as a script from anywhere.

_OUT = flags.DEFINE_string('out', '/tmp/jaxscale_compression_bench', 'Directory for the workdirs.')
_TASKS = flags.DEFINE_list('tasks', ['digits', 'lm'], 'Tasks to run: digits, lm.')
_ROWS = flags.DEFINE_list('rows', ['baseline', 'distill', 'ptq', 'qat', 'prune'],
                          'Rows to run: baseline, distill, ptq, qat, prune (the baseline trains '
                          'whenever ptq asks for it).')
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps of every digits run.')
_LM_STEPS = flags.DEFINE_integer('lm_steps', 100, 'Training steps of every LM run.')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.5', '0.8', '0.9'], 'Pruning rows\' sparsity.')
_PNG = flags.DEFINE_string('png', '', 'Write the accuracy-against-bytes plot here ("" = none).')
_COMPILE_CACHE = flags.DEFINE_string(
    'compile_cache', 'DEFAULT', 'Persistent XLA compilation cache shared by the runs; DEFAULT: '
    '<out>/xla_cache; empty: none.')

# Per task: the config, the student's and the teacher's model overrides, and overrides of every
# run (a small eval and logging cadence suited to the budget).
TASKS = {
    'digits': dict(config='mlp_digits', metric='eval_accuracy',
                   student={'model.hidden_dims': (32,)},
                   teacher={'model.hidden_dims': (512, 512)},
                   run={'optimizer.warmup_steps': 20}),
    'lm': dict(config='default', metric='eval_bits_per_byte',
               student={'model.num_layers': 2, 'model.d_model': 64, 'model.mlp_dim': 256},
               teacher={},  # configs/default.py's own model: 4 layers, d_model 128.
               run={'dataset.seq_len': 128, 'optimizer.warmup_steps': 20,
                    'num_eval_batches': 4}),
}
PTQ_ROWS = (('ptq_w8a8', 'int8', 'int8'), ('ptq_w8', 'int8', ''), ('ptq_w4', 'int4', ''))
DISTILL = {'distill.temperature': 2.0, 'distill.alpha': 0.5}


def load_config(name: str, overrides: dict):
  """configs/<name>.py's get_config() with dotted-key overrides (a key the schema lacks raises
  MissingConfigKey, reported as a skipped row)."""
  from jaxscale.config import config_base  # noqa: PLC0415  (after the import path is set)
  return config_base.set_existing_keys(
      config_base.load_config_file(ROOT / 'configs' / f'{name}.py'), overrides, name=name)


def train_run(task: str, name: str, overrides: dict, out: pathlib.Path) -> pathlib.Path:
  """Trains one row's model from scratch for the task's budget; returns its workdir."""
  from jaxscale.train import loop  # noqa: PLC0415
  spec = TASKS[task]
  steps = _STEPS.value if task == 'digits' else _LM_STEPS.value
  config = load_config(spec['config'], {
      'num_train_steps': steps, 'eval_every_steps': steps, 'checkpoint_every_steps': steps,
      'log_every_steps': max(1, steps // 10), **spec['run'], **overrides})
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 2)
  workdir = out / task / name
  shutil.rmtree(workdir, ignore_errors=True)
  loop.run(config, str(workdir))
  return workdir


def _emit(row: dict):
  print(json.dumps(row), flush=True)


def measure(task: str, row: str, evaluator, objective=None, **extra) -> dict:
  """A table row of a restored model: its size, eval metric and CPU latency per batch."""
  import jax  # noqa: PLC0415
  from jaxscale.compress import quantize  # noqa: PLC0415
  objective = objective or evaluator.objective
  metric = TASKS[task]['metric']
  params = evaluator.state.params
  result = {'task': task, 'row': row,
            'params': sum(x.size for x in jax.tree.leaves(params)),
            'bytes': quantize.tree_bytes(evaluator.state.params)
            + quantize.tree_bytes(evaluator.state.model_state)}
  result.update(extra)
  if metric not in result:
    result[metric] = evaluator.evaluate(objective).get(metric)
  result['latency_s'] = evaluator.latency(objective)
  return result


def sparse_size(evaluator) -> dict:
  """Non-zero parameters, and the bytes of storing them with a 1-bit-per-element mask."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  leaves = jax.tree.leaves(evaluator.state.params)
  nonzero = sum(int(np.count_nonzero(np.asarray(x))) for x in leaves)
  total = sum(x.size for x in leaves)
  return {'nonzero_params': nonzero, 'sparsity': 1 - nonzero / total,
          'sparse_bytes': 4 * nonzero + (total + 7) // 8}


def attempt_rows(task: str, name: str, fn) -> list[dict]:
  """fn()'s rows, or one skipped row where a config key of the compression is missing from this
  checkout. Any other error (a KeyError of a bug included) propagates: it is no skip."""
  from jaxscale.config import config_base  # noqa: PLC0415
  try:
    return fn()
  except config_base.MissingConfigKey as e:
    return [{'task': task, 'row': name, 'skipped': f'config key missing: {e}'}]


def run_task(task: str, rows: set, out: pathlib.Path) -> list[dict]:
  from jaxscale.inference import ptq  # noqa: PLC0415
  spec, results = TASKS[task], []

  def attempt(name: str, fn):
    start = time.perf_counter()
    produced = attempt_rows(task, name, fn)
    for row in produced:
      row.setdefault('wall_s', round(time.perf_counter() - start, 1))
      _emit(row)
      results.append(row)

  baseline = None

  def baseline_rows():
    nonlocal baseline
    baseline = ptq.Evaluator(train_run(task, 'baseline', spec['student'], out))
    return [measure(task, 'baseline', baseline)] if 'baseline' in rows else []

  if rows & {'baseline', 'ptq'}:
    attempt('baseline', baseline_rows)
  if 'distill' in rows:
    def distill_rows():
      load_config(spec['config'], DISTILL)  # This checkout has the keys, before any training.
      teacher = train_run(task, 'teacher', spec['teacher'], out)
      student = train_run(task, 'distill', {**spec['student'], **DISTILL,
                                            'distill.teacher_workdir': str(teacher)}, out)
      return [measure(task, 'teacher', ptq.Evaluator(teacher)),
              measure(task, 'distill', ptq.Evaluator(student))]
    attempt('distill', distill_rows)
  if 'ptq' in rows and baseline is not None:
    for name, weights, activations in PTQ_ROWS:
      def ptq_row(weights=weights, activations=activations, name=name):
        result = ptq.quantize_run(baseline.workdir, weights, activations, evaluator=baseline)
        return [measure(task, name, baseline,
                        ptq.quantize.ptq_objective(baseline.objective, weights, activations),
                        bytes=result['bytes'], float_weights=result['float_weights'],
                        **{spec['metric']: result.get(spec['metric'])})]
      attempt(name, ptq_row)
  if 'qat' in rows:
    def qat_row():
      workdir = train_run(task, 'qat', {**spec['student'], 'quantization.mode': 'qat'}, out)
      evaluator = ptq.Evaluator(workdir)
      result = ptq.quantize_run(workdir, 'int8', 'int8', evaluator=evaluator)
      return [measure(task, 'qat_w8a8', evaluator,
                      ptq.quantize.ptq_objective(evaluator.objective, 'int8', 'int8'),
                      bytes=result['bytes'], **{spec['metric']: result.get(spec['metric'])},
                      **{f'fake_quant_{spec["metric"]}': evaluator.evaluate(
                          ptq.quantize.qat_objective(evaluator.objective,
                                                     evaluator.config.quantization))[
                                                         spec['metric']]})]
    attempt('qat_w8a8', qat_row)
  if 'prune' in rows:
    steps = _STEPS.value if task == 'digits' else _LM_STEPS.value
    for sparsity in _SPARSITIES.value:
      name = f'prune_{round(100 * float(sparsity))}'
      def prune_row(sparsity=float(sparsity), name=name):
        load_config(spec['config'], {'pruning.sparsity': sparsity})
        workdir = train_run(task, name, {
            **spec['student'], 'pruning.sparsity': sparsity, 'pruning.method': 'magnitude',
            'pruning.scope': 'layer', 'pruning.start_step': steps // 5,
            'pruning.end_step': (3 * steps) // 4, 'pruning.update_every': max(1, steps // 40)}, out)
        evaluator = ptq.Evaluator(workdir)
        return [measure(task, name, evaluator, **sparse_size(evaluator))]
      attempt(name, prune_row)
  return results


def plot(results: list[dict], path: str):
  import matplotlib  # noqa: PLC0415
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  tasks = [t for t in TASKS if any(r['task'] == t and 'skipped' not in r for r in results)]
  fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    metric = TASKS[task]['metric']
    for r in results:
      if r['task'] != task or 'skipped' in r or r.get(metric) is None:
        continue
      size = r.get('sparse_bytes', r['bytes'])
      ax.scatter(size, r[metric])
      ax.annotate(r['row'], (size, r[metric]), textcoords='offset points', xytext=(4, 4),
                  fontsize=8)
    ax.set_xscale('log')
    ax.set_xlabel('model bytes (pruned: values + bitmask)')
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out = pathlib.Path(_OUT.value).resolve()
  import jax  # noqa: PLC0415
  if _COMPILE_CACHE.value:
    cache = out / 'xla_cache' if _COMPILE_CACHE.value == 'DEFAULT' else _COMPILE_CACHE.value
    jax.config.update('jax_compilation_cache_dir', str(cache))
  unknown = set(_TASKS.value) - set(TASKS)
  if unknown:
    raise app.UsageError(f'Unknown tasks {sorted(unknown)}; choose from {sorted(TASKS)}.')
  rows = set(_ROWS.value)
  allowed = {'baseline', 'distill', 'ptq', 'qat', 'prune'}
  if rows - allowed:
    raise app.UsageError(f'Unknown rows {sorted(rows - allowed)}; choose from {sorted(allowed)}.')
  results = []
  for task in _TASKS.value:
    results += run_task(task, rows, out)
  if _PNG.value:
    plot(results, _PNG.value)


if __name__ == '__main__':
  app.run(main)
