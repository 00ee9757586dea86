"""Held-out evaluation: the eval step's sums over the fixed eval set, and the row they make."""

import math

import jax
import numpy as np

from jaxscale.core import sharding
from jaxscale.metrics import classification_report


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
