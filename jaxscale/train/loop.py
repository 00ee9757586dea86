"""The training loop: `run(config, workdir)` builds the experiment (`jaxscale.train.experiment`: mesh,
data, model, initial state, compiled steps) and trains it, with periodic logging, evaluation and
checkpoints, until `num_train_steps` or a preemption notice.
"""

import math
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

from jaxscale.checkpoint import preemption
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import sharding
from jaxscale.metrics import classification_report, flops, writers
from jaxscale.train import experiment as experiment_lib


def evaluate(eval_step, state, eval_batches, batch_sharding) -> dict:
  """Over the fixed eval set: `eval_loss` (nats per target), accuracies where the objective counts
  hits, the summed `confusion` matrix of classifiers, and `eval_targets`, the number of targets
  (tokens or examples) they were taken over."""
  totals = jax.device_get(
      [eval_step(state, sharding.global_batch(b, batch_sharding)) for b in eval_batches])
  return eval_result(totals)


def eval_result(totals: list[dict]) -> dict:
  """Eval metrics from the eval step's per-batch sums (on the host): loss, accuracy, confusion."""
  sums = {k: np.sum([np.asarray(t[k], np.float64) for t in totals], axis=0) for k in totals[0]}
  weight_sum = float(sums['weight_sum'])
  result = {'eval_loss': float(sums['loss_sum']) / weight_sum, 'eval_targets': weight_sum}
  for key, name in (('top1_sum', 'eval_accuracy'), ('top5_sum', 'eval_top5_accuracy')):
    if key in sums:
      result[name] = float(sums[key]) / weight_sum
  if 'confusion' in sums:
    result['confusion'] = sums['confusion']
  return result


def eval_metrics(sums: dict, datasets) -> dict[str, float]:
  """The eval row's scalars: bits per token (and byte) for LMs, macro-F1 for classifiers."""
  row = {k: v for k, v in sums.items() if k not in ('eval_targets', 'confusion')}
  if 'confusion' in sums:
    row['eval_macro_f1'] = classification_report.build_report(sums['confusion'])['macro_avg']['f1']
  if datasets.task == 'lm':
    row['eval_bits_per_token'] = row['eval_loss'] / math.log(2)
    if datasets.bytes_per_token:
      row['eval_bits_per_byte'] = row['eval_bits_per_token'] / datasets.bytes_per_token
  return row


class Throughput:
  """Steps/s, examples/s, tokens/s and MFU over the time spent in training steps since the last
  report; no MFU where the peak is unknown (`peak_flops_total` None)."""

  def __init__(self, examples_per_step: int, tokens_per_step: int, flops_per_step: float,
               peak_flops_total: float | None):
    self.examples_per_step, self.tokens_per_step = examples_per_step, tokens_per_step
    self.flops_per_step = flops_per_step
    self.peak_flops_total = peak_flops_total
    self.reset(step=0)

  def reset(self, step: int):
    self.start_time, self.start_step = time.perf_counter(), step

  def report(self, step: int) -> dict[str, float]:
    elapsed = max(time.perf_counter() - self.start_time, 1e-9)
    steps_per_sec = (step - self.start_step) / elapsed
    speed = {
        'steps_per_sec': steps_per_sec,
        'examples_per_sec': steps_per_sec * self.examples_per_step,
        'flops_per_sec': steps_per_sec * self.flops_per_step,
    }
    if self.peak_flops_total:
      speed['mfu'] = steps_per_sec * self.flops_per_step / self.peak_flops_total
    if self.tokens_per_step:
      speed['tokens_per_sec'] = steps_per_sec * self.tokens_per_step
    return speed


def _newest_checkpoint(manager):
  manager.wait_until_finished()  # The last finite state's save completes before stopping.
  return manager.latest_step()


def _check_finite(rows: list[dict], first_step: int, manager, config):
  """Raises on a non-finite loss or gradient norm ('stop'), or warns that the step dropped the
  update ('skip') until more than config.max_skipped_steps were dropped."""
  for offset, row in enumerate(rows):
    step = first_step + offset
    bad = [f'{name}={float(row[name])}' for name in ('train_loss', 'grad_norm')
           if not math.isfinite(float(row[name]))]
    if not bad:
      continue
    if config.nonfinite_policy == 'stop':
      raise FloatingPointError(
          f'{", ".join(bad)} at step {step}. Training stopped before saving this state; the '
          f'newest checkpoint (step {_newest_checkpoint(manager)}) is intact. Lower '
          'optimizer.learning_rate or raise optimizer.warmup_steps, then rerun to resume (or '
          'set --config.nonfinite_policy=skip to drop such updates).')
    skipped = int(row['skipped_updates'])
    logging.warning('Skipped the update at step %d (%s): params and optimizer state kept; %d '
                    'update(s) skipped so far.', step, ', '.join(bad), skipped)
    if skipped > config.max_skipped_steps:
      raise FloatingPointError(
          f'{skipped} updates skipped for a non-finite loss or gradient, more than '
          f'config.max_skipped_steps={config.max_skipped_steps} (the last at step {step}, '
          f'{", ".join(bad)}). The newest checkpoint (step {_newest_checkpoint(manager)}) holds '
          'the last state saved. Lower optimizer.learning_rate or check the data, then rerun to '
          'resume.')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final summary."""
  return train_loop(experiment_lib.build(config, workdir))


def train_loop(experiment: experiment_lib.Experiment) -> dict:
  """Runs `experiment` to config.num_train_steps (or a preemption); returns the final summary."""
  e = experiment
  config, workdir, datasets, state = e.config, e.workdir, e.datasets, e.state
  manager, saver, train_iter, train_step = e.manager, e.saver, e.train_iter, e.train_step
  start_step = int(jax.device_get(state.step))
  # Rows logged after the checkpoint will be logged again by this run.
  workdir_lib.drop_metrics_after(workdir, start_step if e.resumed else -1)

  size = e.size
  tokens_per_step = config.batch_size * size.tokens_per_example
  flops_per_step = e.flops_per_step
  peak_per_device, peak_source = flops.peak_flops_per_device()
  peak_text = (f'peak {peak_per_device:.3g} FLOP/s per device ({peak_source})' if peak_per_device
               else f'MFU not reported: {peak_source}')
  logging.info('Model: %s params (%s non-embedding), %.3g train FLOPs/example; %s; mesh %s.',
               f'{size.params_total:,}', f'{size.params_non_embedding:,}',
               size.train_flops_per_example, peak_text, dict(e.mesh.shape))
  throughput = Throughput(config.batch_size, tokens_per_step, flops_per_step,
                          peak_per_device and peak_per_device * jax.device_count())

  writer = writers.create_writer(workdir)
  scale_numbers = {'params_total': size.params_total,
                   'params_non_embedding': size.params_non_embedding,
                   'flops_per_example': flops_per_step / config.batch_size, **e.param_counts}
  if size.tokens_per_example:
    scale_numbers['flops_per_token'] = flops_per_step / tokens_per_step
  if start_step == 0:
    writer.write_scalars(0, scale_numbers)
  hooks = []
  if config.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                          first_profile=start_step + 10, logdir=str(workdir)))

  def counters(step):
    seen = {'examples_seen': step * config.batch_size, 'flops_seen': step * flops_per_step}
    if tokens_per_step:
      seen['tokens_seen'] = step * tokens_per_step
    return seen

  def run_eval(step):
    # Read anew each time rather than held: the eval set caches its images still encoded.
    sums = evaluate(e.eval_step, state, datasets.eval.as_numpy_iterator(), e.batch_sharding)
    row = eval_metrics(sums, datasets)
    return sums, row

  # All processes stop at the same step (the loop's host syncs are its cadence without JAX's
  # preemption service).
  notice = preemption.PreemptionNotice(agree_every_steps=config.log_every_steps)
  pending, pending_start = [], start_step
  last_train_loss = float('nan')
  eval_row = None
  throughput.reset(start_step)
  for step in range(start_step + 1, config.num_train_steps + 1):
    # The iterator itself (not as_numpy_iterator) is what the checkpoint saves: tf.data
    # iterators give tensors, Grain's numpy arrays.
    local_batch = {k: np.asarray(v) for k, v in next(train_iter).items()}
    batch = sharding.global_batch(local_batch, e.batch_sharding)
    state, step_metrics = train_step(state, batch)
    pending.append(step_metrics)
    for hook in hooks:
      hook(step)
    saver.check(step)

    preempted = notice.reached(step)
    is_last = step == config.num_train_steps
    log_now = step % config.log_every_steps == 0 or is_last
    eval_now = step % config.eval_every_steps == 0 or is_last
    save_now = step % config.checkpoint_every_steps == 0 or is_last or preempted
    if log_now or eval_now or save_now:
      # The only host syncs in the loop: fetch this interval's metrics and check them.
      rows = jax.device_get(pending)
      _check_finite(rows, pending_start + 1, manager, config)
      pending, pending_start = [], step
      finite_losses = [r['train_loss'] for r in rows if np.isfinite(r['train_loss'])]
      if finite_losses:  # (Skipped updates' losses are left out.)
        last_train_loss = float(np.mean(finite_losses))
    if log_now:
      speed = throughput.report(step)
      remaining = (config.num_train_steps - step) / max(speed['steps_per_sec'], 1e-9)
      writer.write_scalars(step, {'train_loss': last_train_loss,
                                  'learning_rate': float(rows[-1]['learning_rate']),
                                  'grad_norm': float(rows[-1]['grad_norm']),
                                  'param_norm': float(rows[-1]['param_norm']),
                                  'skipped_updates': int(rows[-1]['skipped_updates']),
                                  **rows[-1].get('logged', {}),  # Distillation, sparsity.
                                  **speed, **counters(step)})
      rate = (f'{speed["tokens_per_sec"]:.0f} tokens/s' if tokens_per_step
              else f'{speed["examples_per_sec"]:.1f} examples/s')
      mfu = f'MFU {100 * speed["mfu"]:.1f}%' if 'mfu' in speed else 'MFU n/a'
      logging.info('step %d/%d  loss %.4f  lr %.2e  %.2f steps/s  %s  %s  ETA %s',
                   step, config.num_train_steps, last_train_loss, float(rows[-1]['learning_rate']),
                   speed['steps_per_sec'], rate, mfu,
                   time.strftime('%H:%M:%S', time.gmtime(remaining)))
    if eval_now:
      sums, eval_row = run_eval(step)
      writer.write_scalars(step, {**eval_row, 'train_loss': last_train_loss, **counters(step),
                                  **scale_numbers})
      details = ', '.join(f'{k} {v:.4f}' for k, v in eval_row.items() if k != 'eval_loss')
      logging.info('step %d  eval loss %.4f  (%s) on %d targets', step, eval_row['eval_loss'],
                   details, sums['eval_targets'])
    if save_now:
      saver.save(step, state, train_iter)
    if log_now or eval_now or save_now:
      throughput.reset(step)  # Keep eval and checkpoint time out of the next speed report.
    writer.flush()
    if preempted:
      logging.warning('Preemption notice: saved a checkpoint at step %d and stopping; rerun the '
                      'same command to resume.', step)
      break

  final_step = int(jax.device_get(state.step))
  saver.check(final_step, wait=True)
  manager.close()
  if eval_row is None:  # Resumed a finished run or stopped early: measure held-out loss now.
    sums, eval_row = run_eval(final_step)
  if 'confusion' in sums and final_step >= config.num_train_steps:
    report = classification_report.build_report(sums['confusion'], datasets.class_names)
    classification_report.write_report(workdir, report)
    logging.info('Classification report (eval set, step %d):\n%s', final_step, report['text'])
  summary = {'step': final_step, 'finished': final_step >= config.num_train_steps, **eval_row,
             'skipped_updates': int(jax.device_get(state.skipped_updates)),
             'train_loss': last_train_loss if math.isfinite(last_train_loss) else None,
             **counters(final_step), **scale_numbers, 'dataset_min_loss': datasets.min_loss}
  if summary['finished']:  # The sweep tools take summary.json as "this run is done".
    workdir_lib.write_summary(workdir, summary)
  writer.close()
  return summary
