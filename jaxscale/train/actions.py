"""What the loop does around the step, as periodic actions of one shape.

Each action says when it is `due` after a step and then runs on the loop's `Progress`. The build
assembles the standard ones (log, evaluate, checkpoint); an entry point may add its own
(a tracker, an in-training evaluator, an exporter) without the loop knowing them. Whenever any
action is due, the loop first fetches the interval's step metrics to the host (its only sync) and
checks them; the actions run in order, so a checkpoint follows the evaluation it records.
"""

import dataclasses
import math
import time
from typing import Any, Protocol

import numpy as np
from absl import logging

from jaxscale.metrics import flops
from jaxscale.train import evaluation


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


@dataclasses.dataclass
class RunRecord:
  """What every row of a run carries: its scale numbers, and the counters at a step."""
  batch_size: int
  tokens_per_step: int
  flops_per_step: float
  scale_numbers: dict[str, float]

  @classmethod
  def of(cls, experiment) -> 'RunRecord':
    return cls.from_size(experiment.config, experiment.size, experiment.flops_per_step,
                         experiment.param_counts, experiment.flops_per_step_xla)

  @classmethod
  def from_size(cls, config, size, flops_per_step: float, param_counts: dict,
                flops_per_step_xla: float | None = None) -> 'RunRecord':
    """`flops_per_step`: model FLOPs by the analytic count (what `flops_seen` and MFU use);
    `flops_per_step_xla`: XLA's cost analysis of the compiled step, reported beside it."""
    tokens_per_step = config.batch_size * size.tokens_per_example
    scale_numbers = {'params_total': size.params_total,
                     'params_non_embedding': size.params_non_embedding,
                     'flops_per_example': flops_per_step / config.batch_size,
                     'flops_per_step': flops_per_step, **param_counts}
    if flops_per_step_xla:
      scale_numbers['flops_per_step_xla'] = flops_per_step_xla
    if size.tokens_per_example:
      scale_numbers['flops_per_token'] = flops_per_step / tokens_per_step
    return cls(config.batch_size, tokens_per_step, flops_per_step, scale_numbers)

  def counters(self, step: int) -> dict[str, float]:
    seen = {'examples_seen': step * self.batch_size, 'flops_seen': step * self.flops_per_step}
    if self.tokens_per_step:
      seen['tokens_seen'] = step * self.tokens_per_step
    return seen


@dataclasses.dataclass
class Progress:
  """The loop after a step, as the actions see it."""
  step: int
  state: Any
  is_last: bool
  preempted: bool
  rows: list[dict] = dataclasses.field(default_factory=list)  # This interval's step metrics.
  train_loss: float = math.nan  # Mean finite train loss of the last fetched interval.


class Action(Protocol):

  def due(self, progress: Progress) -> bool:
    ...

  def __call__(self, progress: Progress) -> None:
    ...


def every(steps: int, progress: Progress) -> bool:
  return progress.step % steps == 0 or progress.is_last


class LogTrainMetrics:
  """Train loss, optimizer numbers, speed and MFU every `every_steps`, to the writer and the log."""

  def __init__(self, every_steps: int, num_train_steps: int, writer, record: RunRecord,
               throughput: Throughput):
    self.every_steps, self.num_train_steps = every_steps, num_train_steps
    self.writer, self.record, self.throughput = writer, record, throughput

  def due(self, progress: Progress) -> bool:
    return every(self.every_steps, progress)

  def __call__(self, progress: Progress):
    step, last = progress.step, progress.rows[-1]
    speed = self.throughput.report(step)
    remaining = (self.num_train_steps - step) / max(speed['steps_per_sec'], 1e-9)
    self.writer.write_scalars(step, {'train_loss': progress.train_loss,
                                     'learning_rate': float(last['learning_rate']),
                                     'grad_norm': float(last['grad_norm']),
                                     'param_norm': float(last['param_norm']),
                                     'skipped_updates': int(last['skipped_updates']),
                                     **last.get('logged', {}),  # Distillation, sparsity.
                                     **speed, **self.record.counters(step)})
    rate = (f'{speed["tokens_per_sec"]:.0f} tokens/s' if self.record.tokens_per_step
            else f'{speed["examples_per_sec"]:.1f} examples/s')
    mfu = f'MFU {100 * speed["mfu"]:.1f}%' if 'mfu' in speed else 'MFU n/a'
    logging.info('step %d/%d  loss %.4f  lr %.2e  %.2f steps/s  %s  %s  ETA %s',
                 step, self.num_train_steps, progress.train_loss, float(last['learning_rate']),
                 speed['steps_per_sec'], rate, mfu,
                 time.strftime('%H:%M:%S', time.gmtime(remaining)))


class Evaluate:
  """Held-out loss (and accuracy) on the fixed eval set every `every_steps`; keeps the last."""

  def __init__(self, every_steps: int, experiment, writer, record: RunRecord):
    self.every_steps, self.experiment, self.writer, self.record = (
        every_steps, experiment, writer, record)
    self.sums, self.row = None, None

  def due(self, progress: Progress) -> bool:
    return every(self.every_steps, progress)

  def measure(self, state):
    e = self.experiment
    # Read anew each time rather than held: the eval set caches its images still encoded.
    self.sums = evaluation.evaluate(e.eval_step, state, e.datasets.eval.as_numpy_iterator(),
                                    e.batch_sharding, e.datasets.eval_document_ids)
    self.row = evaluation.eval_metrics(self.sums, e.datasets)

  def __call__(self, progress: Progress):
    self.measure(progress.state)
    self.writer.write_scalars(progress.step, {
        **self.row, 'train_loss': progress.train_loss, **self.record.counters(progress.step),
        **self.record.scale_numbers})
    details = ', '.join(f'{k} {v:.4g}' if k == 'eval_documents' else f'{k} {v:.4f}'
                        for k, v in self.row.items() if k != 'eval_loss')
    logging.info('step %d  eval loss %.4f  (%s) on %d targets', progress.step,
                 self.row['eval_loss'], details, self.sums['eval_targets'])


class SaveCheckpoint:
  """A checkpoint (state and input position) every `every_steps`, at the end and on preemption."""

  def __init__(self, every_steps: int, saver, train_iter):
    self.every_steps, self.saver, self.train_iter = every_steps, saver, train_iter

  def due(self, progress: Progress) -> bool:
    return every(self.every_steps, progress) or progress.preempted

  def __call__(self, progress: Progress):
    self.saver.save(progress.step, progress.state, self.train_iter)


def check_finite(rows: list[dict], first_step: int, manager, config):
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


def _newest_checkpoint(manager):
  manager.wait_until_finished()  # The last finite state's save completes before stopping.
  return manager.latest_step()


def mean_finite_loss(rows: list[dict], previous: float) -> float:
  finite_losses = [r['train_loss'] for r in rows if np.isfinite(r['train_loss'])]
  # (Skipped updates' losses are left out; an interval of only those keeps the previous mean.)
  return float(np.mean(finite_losses)) if finite_losses else previous


def peak_flops_total(size, mesh, device_count: int, compute_dtype: str) -> float | None:
  """The devices' peak FLOP/s for MFU at the run's compute dtype (None where unknown), logged
  with the model's size."""
  peak_per_device, peak_source = flops.peak_flops_per_device(compute_dtype)
  peak_text = (f'peak {peak_per_device:.3g} FLOP/s per device ({peak_source})' if peak_per_device
               else f'MFU not reported: {peak_source}')
  logging.info('Model: %s params (%s non-embedding), %.3g train FLOPs/example; %s; mesh %s.',
               f'{size.params_total:,}', f'{size.params_non_embedding:,}',
               size.train_flops_per_example, peak_text, dict(mesh.shape))
  return peak_per_device and peak_per_device * device_count
