"""Held-out evaluation: the eval step's sums over the fixed eval set, and the row they make."""

import math

import jax
import numpy as np

from jaxscale.core import sharding
from jaxscale.metrics import classification_report


def evaluate(eval_step, state, eval_batches, batch_sharding, cluster_ids=None) -> dict:
  """Over the fixed eval set: `eval_loss` (nats per target), accuracies where the objective counts
  hits, the summed `confusion` matrix of classifiers, and `eval_targets`, the number of targets
  (tokens or examples) they were taken over; with `eval_loss_stderr` and `eval_documents` (see
  `eval_result`)."""
  totals = jax.device_get(
      [eval_step(state, sharding.global_batch(b, batch_sharding)) for b in eval_batches])
  return eval_result(totals, cluster_ids)


def eval_result(totals: list[dict], cluster_ids=None) -> dict:
  """Eval metrics from the eval step's per-batch sums (on the host): loss, accuracy, confusion.

  Where the step returns each row's sums (`per_example`; the step's output is replicated, so
  these are every process's rows), also `eval_loss_stderr` and `eval_documents` by
  `clustered_stderr`: `cluster_ids` gives each global row's document (language modelling), None
  makes each row its own cluster (classification: one example each).
  """
  per_example = [t['per_example'] for t in totals if 'per_example' in t]
  sums = {k: np.sum([np.asarray(t[k], np.float64) for t in totals], axis=0) for k in totals[0]
          if k != 'per_example'}
  weight_sum = float(sums['weight_sum'])
  result = {'eval_loss': float(sums['loss_sum']) / weight_sum, 'eval_targets': weight_sum}
  if per_example and len(per_example) == len(totals):
    row_losses, row_weights = (np.concatenate([np.asarray(p[k], np.float64) for p in per_example])
                               for k in ('loss_sum', 'weight_sum'))
    ids = np.arange(len(row_losses)) if cluster_ids is None else np.asarray(cluster_ids)
    documents, loss_d, weight_d = _cluster_sums(row_losses, row_weights, ids)
    result['eval_documents'] = len(documents)
    stderr = _ratio_stderr(loss_d, weight_d)
    if stderr is not None:
      result['eval_loss_stderr'] = stderr
    # Each document's sums: what `eval_by_document.json` holds and `paired_difference` compares.
    result['by_document'] = {'document': documents.tolist(), 'loss_sum': loss_d.tolist(),
                             'weight_sum': weight_d.tolist()}
  for key, name in (('top1_sum', 'eval_accuracy'), ('top5_sum', 'eval_top5_accuracy')):
    if key in sums:
      result[name] = float(sums[key]) / weight_sum
  if 'confusion' in sums:
    result['confusion'] = sums['confusion']
  return result


def clustered_stderr(row_losses, row_weights, cluster_ids) -> tuple[float | None, int]:
  """(standard error of the ratio sum(losses) / sum(weights), number of clusters): the usual
  cluster-robust (linearised) variance of a ratio estimator,

    var = n / (n - 1) * sum_d (Y_d - R W_d)^2 / (sum_d W_d)^2,

  over the n clusters d with weight (Y_d, W_d: the cluster's summed loss and weight; R the
  ratio). It is the sampling error of the eval loss as an estimate of the per-target loss of the
  split its clusters (documents) were drawn from. None with fewer than two clusters.
  """
  _, loss_d, weight_d = _cluster_sums(row_losses, row_weights, cluster_ids)
  return _ratio_stderr(loss_d, weight_d), len(loss_d)


def _cluster_sums(row_losses, row_weights, cluster_ids):
  """(cluster ids, each cluster's summed loss, each cluster's summed weight), over the rows with
  weight only."""
  row_weights = np.asarray(row_weights, np.float64)
  real = row_weights > 0
  clusters, index = np.unique(np.asarray(cluster_ids)[real], return_inverse=True)
  loss_d = np.bincount(index, np.asarray(row_losses, np.float64)[real], len(clusters))
  weight_d = np.bincount(index, row_weights[real], len(clusters))
  return clusters, loss_d, weight_d


def _ratio_stderr(loss_d, weight_d) -> float | None:
  """`clustered_stderr` from the clusters' sums."""
  n = len(loss_d)
  if n < 2:
    return None
  ratio = loss_d.sum() / weight_d.sum()
  variance = n / (n - 1) * np.sum((loss_d - ratio * weight_d) ** 2) / weight_d.sum() ** 2
  return float(np.sqrt(variance))


def paired_difference(a: dict, b: dict) -> dict[str, float]:
  """Eval loss of run b minus run a on the same eval set, from their `eval_by_document.json`,
  with the standard error of that difference clustered by document.

  Both runs scored the same windows, so what the documents share (some are harder than others)
  cancels: the difference's standard error is usually far smaller than either run's
  `eval_loss_stderr`, and it is the one to judge "b is better than a" by.
  """
  if a['document'] != b['document'] or a['weight_sum'] != b['weight_sum']:
    raise ValueError('The two runs were evaluated on different eval sets (other documents or '
                     'targets); a paired difference needs the same dataset, seq_len and eval '
                     'size.')
  weights = np.asarray(a['weight_sum'])
  # The difference of two ratios with one denominator is the ratio of the differences.
  stderr, documents = clustered_stderr(
      np.subtract(b['loss_sum'], a['loss_sum']), weights, np.arange(len(weights)))
  difference = (np.sum(b['loss_sum']) - np.sum(a['loss_sum'])) / weights.sum()
  return {'difference': float(difference), 'stderr': stderr, 'documents': documents}


def eval_metrics(sums: dict, datasets) -> dict[str, float]:
  """The eval row's scalars: bits per token (and byte) for LMs, macro-F1 for classifiers."""
  row = {k: v for k, v in sums.items() if k not in ('eval_targets', 'confusion', 'by_document')}
  if 'eval_documents' in row:
    row['eval_documents'] = int(row['eval_documents'])
  if 'confusion' in sums:
    row['eval_macro_f1'] = classification_report.build_report(sums['confusion'])['macro_avg']['f1']
  if datasets.task == 'lm':
    row['eval_bits_per_token'] = row['eval_loss'] / math.log(2)
    if datasets.bytes_per_token:
      row['eval_bits_per_byte'] = row['eval_bits_per_token'] / datasets.bytes_per_token
  return row
