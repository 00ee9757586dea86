"""The eval loss's standard error, and the fields eval rows and summary.json carry."""

import json

import numpy as np
import pytest

from jaxscale.train import evaluation


def _direct_clustered_stderr(losses, weights, ids):
  """The sandwich (cluster-robust) variance of a weighted mean, term by term in plain Python:
  the eval loss is the weighted least-squares intercept of y_i / w_i with weights w_i."""
  clusters = {}
  for loss, weight, cluster in zip(losses, weights, ids):
    if weight > 0:
      clusters.setdefault(cluster, []).append((loss, weight))
  total_weight = sum(w for rows in clusters.values() for _, w in rows)
  mean = sum(y for rows in clusters.values() for y, _ in rows) / total_weight
  meat = 0.0
  for rows in clusters.values():
    score = sum(w * (y / w - mean) for y, w in rows)  # X_g' W_g e_g for an intercept X = 1.
    meat += score ** 2
  g = len(clusters)
  return (g / (g - 1) * meat / total_weight ** 2) ** 0.5, g


def _totals(losses, weights, batch):
  """The eval step's per-batch output for rows in order, `batch` rows per batch."""
  return [{'loss_sum': losses[i:i + batch].sum(), 'weight_sum': weights[i:i + batch].sum(),
           'per_example': {'loss_sum': losses[i:i + batch], 'weight_sum': weights[i:i + batch]}}
          for i in range(0, len(losses), batch)]


def test_stderr_is_the_cluster_robust_one_by_document():
  rng = np.random.default_rng(0)
  ids = np.repeat(np.arange(12), rng.integers(1, 5, 12))
  weights = rng.integers(1, 65, len(ids)).astype(float)
  weights[-3:] = 0  # Padding rows.
  per_token = 2.0 + rng.normal(size=12)[ids] + 0.3 * rng.normal(size=len(ids))
  losses = per_token * weights
  result = evaluation.eval_result(_totals(losses, weights, batch=4), ids)
  expected, clusters = _direct_clustered_stderr(losses, weights, ids)
  assert result['eval_loss'] == pytest.approx(losses.sum() / weights.sum())
  assert result['eval_documents'] == clusters == len(set(ids[weights > 0].tolist()))
  assert result['eval_loss_stderr'] == pytest.approx(expected, rel=1e-12)
  # Clustering by document is wider here than treating windows as independent: documents differ.
  by_window = evaluation.eval_result(_totals(losses, weights, batch=4))['eval_loss_stderr']
  assert result['eval_loss_stderr'] > 1.5 * by_window


def test_stderr_without_clusters_is_the_plain_standard_error_of_the_mean():
  """Classification: one example per row, each its own cluster: std / sqrt(n) (ddof 1)."""
  losses = np.array([0.1, 0.5, 2.0, 0.3, 0.0, 1.2, 0.0])
  weights = np.array([1, 1, 1, 1, 1, 1, 0.0])
  result = evaluation.eval_result(_totals(losses * weights, weights, batch=3))
  real = losses[:6]
  assert result['eval_documents'] == 6
  assert result['eval_loss_stderr'] == pytest.approx(real.std(ddof=1) / np.sqrt(6))


def test_one_document_has_no_stderr():
  result = evaluation.eval_result(_totals(np.ones(4), np.ones(4), batch=2), np.zeros(4))
  assert result['eval_documents'] == 1 and 'eval_loss_stderr' not in result


def test_paired_difference_is_far_tighter_than_either_stderr():
  rng = np.random.default_rng(1)
  ids = np.repeat(np.arange(40), 3)
  weights = np.full(len(ids), 64.0)
  difficulty = rng.normal(size=40)[ids]  # Shared by both runs: some documents are harder.
  a_losses = (3.0 + difficulty + 0.05 * rng.normal(size=len(ids))) * weights
  b_losses = (2.9 + difficulty + 0.05 * rng.normal(size=len(ids))) * weights
  a = evaluation.eval_result(_totals(a_losses, weights, batch=8), ids)
  b = evaluation.eval_result(_totals(b_losses, weights, batch=8), ids)
  paired = evaluation.paired_difference(a['by_document'], b['by_document'])
  assert paired['difference'] == pytest.approx(b['eval_loss'] - a['eval_loss'])
  expected, _ = _direct_clustered_stderr(b_losses - a_losses, weights, ids)
  assert paired['stderr'] == pytest.approx(expected) and paired['documents'] == 40
  assert paired['stderr'] < 0.1 * min(a['eval_loss_stderr'], b['eval_loss_stderr'])
  assert paired['difference'] < -4 * paired['stderr']  # b is better, clearly.
  other = evaluation.eval_result(_totals(a_losses[:-3], weights[:-3], batch=8), ids[:-3])
  with pytest.raises(ValueError, match='different eval sets'):
    evaluation.paired_difference(a['by_document'], other['by_document'])


def test_lm_rows_and_summary_carry_the_stderr_and_documents(tiny_lm_run):
  workdir, summary = tiny_lm_run
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  eval_row = next(r for r in rows if 'eval_loss' in r)
  saved = json.loads((workdir / 'summary.json').read_text())
  for record in (eval_row, saved, summary):
    assert 0 < record['eval_loss_stderr'] < 0.2 * record['eval_loss']
    assert record['eval_documents'] > 1
  assert saved['eval_loss_stderr'] == pytest.approx(eval_row['eval_loss_stderr'])
  documents = json.loads((workdir / 'eval_by_document.json').read_text())
  assert len(documents['document']) == saved['eval_documents']
  assert sum(documents['loss_sum']) / sum(documents['weight_sum']) == pytest.approx(
      saved['eval_loss'])


def test_classifier_rows_count_examples_of_the_validation_carve_out(digits_mlp_run):
  workdir, summary = digits_mlp_run
  config = json.loads((workdir / 'config.json').read_text())
  assert config['dataset']['eval_split'] == 'validation'
  assert summary['eval_documents'] == 149  # 10% of each digit class of the 1,497 train images.
  accuracy = summary['eval_accuracy']
  loss_stderr = summary['eval_loss_stderr']
  assert 0 < loss_stderr < summary['eval_loss'] and 0.5 < accuracy <= 1
