"""Per-class precision, recall and F1 of a classifier's eval, from its confusion matrix (host side).

The eval loop sums a confusion matrix over the eval set (rows: true class, columns: predicted
class; weighted counts, so padding rows add nothing). `build_report` turns it into numbers by
scikit-learn's `classification_report`, each cell standing for its count of (true, predicted)
examples through `sample_weight`. `write_report` saves them as `eval_report.json` and a
readable `eval_report.txt`.
"""

import json

from etils import epath
import jax
import numpy as np
from sklearn import metrics

JSON_NAME = 'eval_report.json'
TEXT_NAME = 'eval_report.txt'


def _as_labels(confusion: np.ndarray):
  """(y_true, y_pred, sample_weight): one entry per cell, weighted by its count."""
  num_classes = confusion.shape[0]
  true, predicted = np.divmod(np.arange(num_classes * num_classes), num_classes)
  return true, predicted, confusion.ravel()


def _scores(scores: dict) -> dict:
  return {'precision': float(scores['precision']), 'recall': float(scores['recall']),
          'f1': float(scores['f1-score']), 'support': float(scores['support'])}


def confusion_matrix(labels, logits, weights, num_classes: int) -> np.ndarray:
  """float64 [K, K] of one batch: `labels` one-hot [B, K], `logits` [B, K], `weights` [B]."""
  return metrics.confusion_matrix(
      np.argmax(labels, -1), np.argmax(logits, -1), labels=np.arange(num_classes),
      sample_weight=np.asarray(weights, np.float64)).astype(np.float64)


def build_report(confusion, class_names=None) -> dict:
  """Precision, recall, F1 and support of every class, their averages and the accuracy.

  confusion: [K, K] counts (or weights), rows the true class and columns the predicted one.
  A class nobody predicted (or with no examples) scores 0 where its metric is undefined.
  Returns a JSON-serialisable dict; its 'text' is the report as scikit-learn prints it, with
  the matrix below.
  """
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  if confusion.shape != (num_classes, num_classes):
    raise ValueError(f'A confusion matrix is square; got shape {confusion.shape}.')
  if not confusion.sum() > 0:
    raise ValueError('The confusion matrix is empty: no eval example was counted.')
  names = [str(name) for name in (class_names or range(num_classes))]
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for a {num_classes}-class confusion matrix.')
  true, predicted, weight = _as_labels(confusion)
  kwargs = dict(labels=np.arange(num_classes), target_names=names, sample_weight=weight,
                zero_division=0, digits=4)
  scores = metrics.classification_report(true, predicted, output_dict=True, **kwargs)
  return {
      'class_names': names,
      'per_class': {name: _scores(scores[name]) for name in names},
      'macro_avg': _scores(scores['macro avg']),
      'weighted_avg': _scores(scores['weighted avg']),
      'accuracy': float(scores['accuracy']),
      'num_examples': float(confusion.sum()),
      'confusion_matrix': confusion.tolist(),
      'text': (metrics.classification_report(true, predicted, **kwargs) + '\n'
               + format_confusion(confusion, names)),
  }


def format_confusion(confusion: np.ndarray, names: list[str]) -> str:
  """The matrix as a table: a row per true class, a column per predicted class."""
  cells = [[f'{count:g}' for count in row] for row in confusion]
  width = max(len(cell) for row in cells for cell in row)
  name_width = max(map(len, names))
  lines = ['Confusion matrix (rows: true class, columns: predicted, in the same order):']
  lines += [f'{name:>{name_width}}  ' + ' '.join(f'{cell:>{width}}' for cell in row)
            for name, row in zip(names, cells)]
  return '\n'.join(lines) + '\n'


def write_report(workdir, report: dict):
  """Writes workdir/eval_report.json (the numbers) and eval_report.txt; process 0 only."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  numbers = {key: value for key, value in report.items() if key != 'text'}
  (workdir / JSON_NAME).write_text(json.dumps(numbers, indent=2) + '\n')
  (workdir / TEXT_NAME).write_text(report['text'])
