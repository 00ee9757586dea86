"""Training a `multi.MultiExperiment`: one loop, K workdirs, each written as a solo run writes it.

Every model gets its own `config.json`, `metrics.jsonl` (and TensorBoard events) and
`summary.json`, with the rows and fields `loop.train_loop` writes (speeds are the shared
program's steps/s, and each model's own tokens/s and MFU). A model whose loss or gradient turns
non-finite under nonfinite_policy='stop' stops logging there, as its solo run would stop; the
others go on.
"""

import math
import time

import jax
import numpy as np
from absl import logging

from jaxscale.config import workdir as workdir_lib
from jaxscale.core import paths
from jaxscale.hparams import multi
from jaxscale.metrics import flops, writers
from jaxscale.train import actions, evaluation


def _per_model(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def evaluate(e: multi.MultiExperiment, state, eval_batches) -> list[dict]:
  """evaluation.evaluate's sums for each model."""
  totals = jax.device_get([e.eval_step(state, batch, e.seeds) for batch in eval_batches])
  results = []
  for k in range(len(e.configs)):
    model_totals = [_per_model(t, k) for t in totals]
    results.append(evaluation.eval_metrics(
        evaluation.eval_result(model_totals, e.datasets[k].eval_document_ids), e.datasets[k]))
  return results


def _eval_batches(e):
  """The eval batches, read anew on each call (the eval sets cache their inputs themselves)."""
  if e.shared_data:
    yield from e.datasets[0].eval.as_numpy_iterator()
    return
  for group in zip(*[d.eval.as_numpy_iterator() for d in e.datasets]):
    yield multi.stack_batches(list(group))


def _next_batch(e, iterators):
  if e.shared_data:
    return {k: np.asarray(v) for k, v in next(iterators[0]).items()}
  return multi.stack_batches([{k: np.asarray(v) for k, v in next(it).items()}
                               for it in iterators])


def run(config, workdirs: list[str], values: dict[str, list]) -> list[dict]:
  """Trains the K models of `config` x `values` in one program; returns their summaries."""
  e = multi.build(config, values)
  if len(workdirs) != len(e.configs):
    raise ValueError(f'{len(workdirs)} workdirs for {len(e.configs)} models; give one each.')
  workdirs = [paths.resolve(w) for w in workdirs]
  for workdir, c in zip(workdirs, e.configs):
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.record_config(workdir, c)
    workdir_lib.drop_metrics_after(workdir, -1)  # A multi run always starts from step 0.
  return train_loop(e, workdirs)


def train_loop(e: multi.MultiExperiment, workdirs) -> list[dict]:
  config, num_models = e.configs[0], len(e.configs)
  record = actions.RunRecord.from_size(config, e.size, e.flops_per_step,
                                       {'params_trainable': e.size.params_total,
                                        'params_frozen': 0}, e.flops_per_step_xla)
  scale_numbers, counters, tokens_per_step = (record.scale_numbers, record.counters,
                                              record.tokens_per_step)
  peak_per_device, _ = flops.peak_flops_per_device(flops.compute_dtype(config))
  throughput = actions.Throughput(config.batch_size, tokens_per_step, e.flops_per_step,
                                  peak_per_device and peak_per_device * jax.device_count())
  model_writers = [writers.create_writer(w) for w in workdirs]
  for writer in model_writers:
    writer.write_scalars(0, scale_numbers)

  iterators = [iter(d.train) for d in ([e.datasets[0]] if e.shared_data else e.datasets)]
  state, pending = e.state, []
  alive = [True] * num_models        # False once a model's loss went non-finite ('stop').
  last_loss = [math.nan] * num_models
  eval_rows = [None] * num_models
  start = time.perf_counter()
  throughput.reset(0)
  for step in range(1, config.num_train_steps + 1):
    state, step_metrics = e.train_step(state, _next_batch(e, iterators), e.seeds)
    pending.append(step_metrics)
    is_last = step == config.num_train_steps
    log_now = step % config.log_every_steps == 0 or is_last
    eval_now = step % config.eval_every_steps == 0 or is_last
    # A solo run also fetches at its checkpoint steps: the same intervals give the same means.
    fetch_now = log_now or eval_now or step % config.checkpoint_every_steps == 0
    if fetch_now:
      rows = jax.device_get(pending)
      pending = []
      _update_losses(rows, step - len(rows) + 1, config, alive, last_loss, workdirs)
    if log_now:
      speed = throughput.report(step)
      for k in (k for k in range(num_models) if alive[k]):
        model_writers[k].write_scalars(step, {
            'train_loss': last_loss[k], 'learning_rate': float(rows[-1]['learning_rate'][k]),
            'grad_norm': float(rows[-1]['grad_norm'][k]),
            'param_norm': float(rows[-1]['param_norm'][k]),
            'skipped_updates': int(rows[-1]['skipped_updates'][k]), **speed, **counters(step)})
    if eval_now:
      for k, row in enumerate(evaluate(e, state, _eval_batches(e))):
        if alive[k]:
          eval_rows[k] = row
          model_writers[k].write_scalars(step, {**row, 'train_loss': last_loss[k], **counters(step),
                                          **scale_numbers})
    if fetch_now:
      throughput.reset(step)
    for writer in model_writers:
      writer.flush()
  logging.info('Trained %d models for %d steps in %.1f s.', num_models, config.num_train_steps,
               time.perf_counter() - start)

  skipped = jax.device_get(state.skipped_updates)
  summaries = []
  for k in range(num_models):
    summary = {'step': config.num_train_steps, 'finished': alive[k], **(eval_rows[k] or {}),
               'skipped_updates': int(skipped[k]),
               'train_loss': last_loss[k] if math.isfinite(last_loss[k]) else None,
               **counters(config.num_train_steps), **scale_numbers,
               'dataset_min_loss': e.datasets[k].min_loss}
    if alive[k]:
      workdir_lib.write_summary(workdirs[k], summary)
    model_writers[k].close()
    summaries.append(summary)
  return summaries


def _update_losses(rows, first_step, config, alive, last_loss, workdirs):
  """Each model's mean finite train loss over the interval; stops a model that went non-finite
  (nonfinite_policy='stop') or skipped too many updates ('skip'), as its solo run would stop."""
  losses = np.asarray([r['train_loss'] for r in rows], np.float64)        # [steps, K]
  grad_norms = np.asarray([r['grad_norm'] for r in rows], np.float64)
  skipped = np.asarray(rows[-1]['skipped_updates'])
  for k in range(len(alive)):
    if not alive[k]:
      continue
    finite = np.isfinite(losses[:, k]) & np.isfinite(grad_norms[:, k])
    too_many = config.nonfinite_policy == 'skip' and skipped[k] > config.max_skipped_steps
    if (config.nonfinite_policy == 'stop' and not finite.all()) or too_many:
      bad_step = first_step + int(np.argmin(finite))
      logging.warning('Model %d (%s): non-finite loss or gradient at step %d; it stops here, '
                      'the others go on.', k, workdirs[k], bad_step)
      alive[k] = False
      continue
    if finite.any():
      last_loss[k] = float(np.mean(losses[finite, k]))


