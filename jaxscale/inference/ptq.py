"""Post-training quantization of a finished run, evaluated on its own eval set.

  python -m jaxscale.compress quantize --workdir W --weights int8 [--activations int8] [--out DIR]

The float parameters of W's newest checkpoint are restored (`restore.restore_model`) and
quantized on load by Qwix; the quantized model runs through the usual eval step
(`steps.eval_step`, W's objective) on W's fixed eval set. The result (also written to
`DIR/result.json`, by default `W/quantized/<weights>[_a<activations>]/`) holds the quantized
model's eval metrics, the float model's beside them (`float_eval_*`, same batches), and its
sizes (`quantize.size_report`).
"""

import json
import time

import jax
import numpy as np
from etils import epath
from flax import nnx

from jaxscale import objectives
from jaxscale.checkpoint import checkpointing, restore
from jaxscale.compress import quantize
from jaxscale.core import paths, sharding
from jaxscale.objectives.classification import model_inputs
from jaxscale.train import evaluation, steps

RESULT_FILE = 'result.json'
REPORTED = ('eval_loss', 'eval_accuracy', 'eval_top5_accuracy', 'eval_bits_per_byte',
            'eval_bits_per_token', 'eval_macro_f1')


def default_out_dir(workdir, weights: str, activations: str = '') -> epath.Path:
  name = weights + (f'_a{activations}' if activations else '')
  return paths.resolve(workdir) / 'quantized' / name


def check_finished_run(workdir) -> epath.Path:
  """The resolved workdir, or an error saying what is missing: its config.json or a checkpoint."""
  workdir = paths.resolve(workdir)
  if not (workdir / 'config.json').exists():
    raise FileNotFoundError(f'{workdir} is not a jaxscale run directory (no config.json): pass the '
                            '--workdir of a trained run.')
  if not checkpointing.has_checkpoints(workdir):
    raise FileNotFoundError(f'{workdir} has no checkpoint to quantize under '
                            f'{workdir / "checkpoints"}; train it first.')
  return workdir


class Evaluator:
  """A restored run's model, eval set and eval step, to evaluate it float or quantized."""

  def __init__(self, workdir):
    from jaxscale import data as data_lib  # noqa: PLC0415  (TensorFlow loads here)
    self.workdir = check_finished_run(workdir)
    self.model, self.config = restore.restore_model(self.workdir)
    config = self.config
    # The run's own eval set, assembled on one device: the model was restored onto it.
    self.datasets = data_lib.get_datasets(
        config.dataset, local_batch_size=config.batch_size,
        num_eval_batches=config.num_eval_batches, seed=config.seed)
    # The first batch only (calibration and latency); evaluation reads the set anew each time,
    # so no decoded copy of the whole eval set stays in memory.
    self.first_eval_batch = next(self.datasets.eval.as_numpy_iterator())
    self.objective = objectives.make(objectives.name_for(config, self.datasets.task), config)
    mesh = jax.make_mesh((1,), ('batch',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.local_devices()[:1])
    self.batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
    self.graphdef, params, model_state = nnx.split(self.model, nnx.Param, ...)
    self.state = steps.TrainState(step=np.int32(0), params=params, model_state=model_state,
                                  opt_state=(), skipped_updates=np.int32(0))

  def sample_inputs(self):
    """One eval batch's model inputs (Qwix traces the model on them to see its ops)."""
    return model_inputs(sharding.global_batch(self.first_eval_batch, self.batch_sharding))

  def eval_step(self, objective):
    return jax.jit(lambda state, batch: steps.eval_step(
        state, batch, graphdef=self.graphdef, objective=objective, seed=self.config.seed))

  def evaluate(self, objective) -> dict:
    """The eval row (as training logs it) of the model under `objective`."""
    sums = evaluation.evaluate(self.eval_step(objective), self.state,
                                self.datasets.eval.as_numpy_iterator(), self.batch_sharding,
                                self.datasets.eval_document_ids)
    row = evaluation.eval_metrics(sums, self.datasets)
    return {k: row[k] for k in REPORTED if k in row}

  def latency(self, objective, repeats: int = 20) -> float:
    """Seconds per eval batch of the compiled step: the fastest of `repeats` timed calls (the
    least disturbed by whatever else the machine runs)."""
    step = self.eval_step(objective)
    batch = sharding.global_batch(self.first_eval_batch, self.batch_sharding)
    jax.block_until_ready(step(self.state, batch))  # Compile.
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(step(self.state, batch))
      times.append(time.perf_counter() - start)
    return min(times)


def _latest_step(workdir) -> int:
  reader = checkpointing.read_only_manager(workdir)
  try:
    return reader.latest_step()
  finally:
    reader.close()


def quantize_run(workdir, weights: str, activations: str = '', out=None,
                 evaluator: Evaluator | None = None) -> dict:
  """Quantizes W's float model (Qwix PTQ), evaluates it and writes `result.json`; returns it."""
  quantize.rules(weights, activations)  # Bad names fail before anything loads.
  evaluator = evaluator or Evaluator(workdir)
  try:
    quantized_objective = quantize.ptq_objective(evaluator.objective, weights, activations)
    sizes = quantize.size_report(evaluator.model, weights, activations, *evaluator.sample_inputs())
    quantized_row = evaluator.evaluate(quantized_objective)
  except (AssertionError, ValueError, TypeError) as e:
    raise RuntimeError(
        f'Qwix could not quantize the {evaluator.config.model.name!r} model of {evaluator.workdir} '
        f'(weights={weights}, activations={activations or "float"}): {type(e).__name__}: {e}'
    ) from e
  float_row = evaluator.evaluate(evaluator.objective)
  result = {
      'workdir': str(evaluator.workdir),
      'step': _latest_step(evaluator.workdir),
      'model': evaluator.config.model.name,
      'weights': weights,
      'activations': activations or 'float',
      **quantized_row,
      **{f'float_{k}': v for k, v in float_row.items()},
      **sizes,
      'bytes_ratio': sizes['bytes'] / sizes['float_bytes'],
  }
  out = paths.resolve(out) if out else default_out_dir(evaluator.workdir, weights, activations)
  out.mkdir(parents=True, exist_ok=True)
  (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + '\n')
  return result

