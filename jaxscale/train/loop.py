"""The training loop: `run(config, workdir)` builds the experiment (`experiment.build`: mesh, data,
model, initial state, compiled steps) and trains it to `num_train_steps` or a preemption notice.

The loop is the step and its input; logging, evaluation and checkpoints are periodic actions
(`actions.py`) that `standard_actions` assembles, and an entry point may add more.
"""

import json
import math

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

from jaxscale.checkpoint import preemption
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import sharding
from jaxscale.metrics import classification_report, flops, writers
from jaxscale.train import actions as actions_lib, experiment as experiment_lib


def run(config: ml_collections.ConfigDict, workdir: str, extra_actions=()) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final summary.

  `extra_actions(experiment, writer, record)` -> actions run after the standard ones.
  """
  return train_loop(experiment_lib.build(config, workdir), extra_actions)


def train_loop(e: experiment_lib.Experiment, extra_actions=()) -> dict:
  """Runs experiment `e` to config.num_train_steps (or a preemption); returns the final summary."""
  config, state = e.config, e.state
  start_step = int(jax.device_get(state.step))
  # Rows logged after the checkpoint will be logged again by this run.
  workdir_lib.drop_metrics_after(e.workdir, start_step if e.resumed else -1)
  writer, record = writers.create_writer(e.workdir, config), actions_lib.RunRecord.of(e)
  if start_step == 0:
    writer.write_scalars(0, record.scale_numbers)
  throughput = actions_lib.Throughput(
      config.batch_size, record.tokens_per_step, record.flops_per_step,
      actions_lib.peak_flops_total(e.size, e.mesh, jax.device_count(),
                                   flops.compute_dtype(config)))
  periodic = standard_actions(e, writer, record, throughput)
  periodic += [*(make(e, writer, record) for make in extra_actions)]
  evaluator = next(a for a in periodic if isinstance(a, actions_lib.Evaluate))
  step_hooks = [*_profiler(config, start_step, e.workdir), e.saver.check]
  # All processes stop at the same step (the loop's host syncs are its cadence without JAX's
  # preemption service).
  notice = preemption.PreemptionNotice(agree_every_steps=config.log_every_steps)
  pending, train_loss = [], math.nan
  throughput.reset(start_step)
  for step in range(start_step + 1, config.num_train_steps + 1):
    state, step_metrics = e.train_step(state, _next_batch(e))
    pending.append(step_metrics)
    for hook in step_hooks:
      hook(step)
    progress = actions_lib.Progress(step, state, is_last=step == config.num_train_steps,
                                    preempted=notice.reached(step), train_loss=train_loss)
    due = [action for action in periodic if action.due(progress)]
    if due:  # The loop's only host sync: this interval's metrics, checked before anything uses them.
      progress.rows = jax.device_get(pending)
      actions_lib.check_finite(progress.rows, step - len(pending) + 1, e.manager, config)
      pending = []
      progress.train_loss = train_loss = actions_lib.mean_finite_loss(progress.rows, train_loss)
      for action in due:
        action(progress)
      throughput.reset(step)  # Keep eval and checkpoint time out of the next speed report.
    writer.flush()
    if progress.preempted:
      logging.warning('Preemption notice: saved a checkpoint at step %d and stopping; rerun the '
                      'same command to resume.', step)
      break
  return _finish(e, state, writer, record, evaluator, train_loss)


def standard_actions(e, writer, record, throughput) -> list:
  """Log, evaluate, then checkpoint: a checkpoint follows the evaluation it records."""
  config = e.config
  return [actions_lib.LogTrainMetrics(config.log_every_steps, config.num_train_steps, writer,
                                      record, throughput),
          actions_lib.Evaluate(config.eval_every_steps, e, writer, record),
          actions_lib.SaveCheckpoint(config.checkpoint_every_steps, e.saver, e.train_iter)]


def _profiler(config, start_step: int, workdir) -> list:
  if not config.profile_steps or jax.process_index() != 0:
    return []
  return [periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                   first_profile=start_step + 10, logdir=str(workdir))]


def _next_batch(e):
  # The iterator itself (not as_numpy_iterator) is what the checkpoint saves: tf.data
  # iterators give tensors, Grain's numpy arrays.
  local_batch = {k: np.asarray(v) for k, v in next(e.train_iter).items()}
  return sharding.global_batch(local_batch, e.batch_sharding)


def _finish(e, state, writer, record, evaluator, train_loss: float) -> dict:
  """Waits for the last checkpoint, writes the classification report and summary.json."""
  config = e.config
  final_step = int(jax.device_get(state.step))
  e.saver.check(final_step, wait=True)
  e.manager.close()
  if evaluator.row is None:  # Resumed a finished run or stopped early: measure held-out loss now.
    evaluator.measure(state)
  sums, eval_row = evaluator.sums, evaluator.row
  if 'confusion' in sums and final_step >= config.num_train_steps:
    report = classification_report.build_report(sums['confusion'], e.datasets.class_names)
    classification_report.write_report(e.workdir, report)
    logging.info('Classification report (eval set, step %d):\n%s', final_step, report['text'])
  summary = {'step': final_step, 'finished': final_step >= config.num_train_steps, **eval_row,
             'skipped_updates': int(jax.device_get(state.skipped_updates)),
             'train_loss': train_loss if math.isfinite(train_loss) else None,
             **record.counters(final_step), **record.scale_numbers,
             'dataset_min_loss': e.datasets.min_loss}
  if 'by_document' in sums and jax.process_index() == 0:  # For paired comparisons of runs.
    (e.workdir / 'eval_by_document.json').write_text(json.dumps(sums['by_document']) + '\n')
  if summary['finished']:  # The sweep tools take summary.json as "this run is done".
    workdir_lib.write_summary(e.workdir, summary)
  writers.write_summary(writer, summary)
  writer.close()
  return summary
