"""Classification reports from a confusion matrix: sklearn's numbers, by-hand macro F1, files."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics

from jaxscale.metrics import classification_report

# Rows: true class, columns: predicted class.
CONFUSION = np.array([[5, 1, 0],
                      [2, 3, 1],
                      [0, 0, 4]])
NAMES = ('cat', 'dog', 'bird')


def _label_arrays(confusion):
  true, predicted = np.nonzero(confusion)
  counts = confusion[true, predicted]
  return np.repeat(true, counts), np.repeat(predicted, counts)


def test_per_class_numbers_equal_sklearn_on_the_label_arrays():
  report = classification_report.build_report(CONFUSION, NAMES)
  y_true, y_pred = _label_arrays(CONFUSION)
  precision, recall, f1, support = metrics.precision_recall_fscore_support(y_true, y_pred)
  for index, name in enumerate(NAMES):
    scores = report['per_class'][name]
    np.testing.assert_allclose(
        [scores['precision'], scores['recall'], scores['f1'], scores['support']],
        [precision[index], recall[index], f1[index], support[index]])
  assert report['accuracy'] == metrics.accuracy_score(y_true, y_pred) == 12 / 16
  np.testing.assert_allclose(report['weighted_avg']['f1'],
                             metrics.f1_score(y_true, y_pred, average='weighted'))
  assert report['confusion_matrix'] == CONFUSION.tolist() and report['num_examples'] == 16


def test_macro_f1_equals_the_value_by_hand():
  # cat: TP 5, FP 2 (column), FN 1 (row): P 5/7, R 5/6, F1 = 2TP / (2TP + FP + FN) = 10/13.
  # dog: TP 3, FP 1, FN 3: P 3/4, R 1/2, F1 = 6/10. bird: TP 4, FP 1, FN 0: P 4/5, R 1, F1 8/9.
  report = classification_report.build_report(CONFUSION, NAMES)
  np.testing.assert_allclose([report['per_class'][name]['f1'] for name in NAMES],
                             [10 / 13, 6 / 10, 8 / 9])
  np.testing.assert_allclose(report['macro_avg']['f1'], (10 / 13 + 6 / 10 + 8 / 9) / 3)
  np.testing.assert_allclose(report['macro_avg']['precision'], (5 / 7 + 3 / 4 + 4 / 5) / 3)
  np.testing.assert_allclose(report['macro_avg']['recall'], (5 / 6 + 1 / 2 + 1) / 3)


def test_weighted_counts_give_the_same_scores():
  halves = classification_report.build_report(CONFUSION * 0.5, NAMES)
  whole = classification_report.build_report(CONFUSION, NAMES)
  for name in NAMES:
    for key in ('precision', 'recall', 'f1'):
      np.testing.assert_allclose(halves['per_class'][name][key], whole['per_class'][name][key])
    assert halves['per_class'][name]['support'] == whole['per_class'][name]['support'] / 2


def test_classes_without_examples_or_predictions_score_zero_without_warnings():
  confusion = np.zeros([4, 4])
  confusion[:3, :3] = CONFUSION
  confusion[3, 0] = 2  # Class 3 has examples but is never predicted.
  confusion = np.pad(confusion, [(0, 1), (0, 1)])  # Class 4: no examples, no predictions.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    report = classification_report.build_report(confusion)
  assert report['class_names'] == ['0', '1', '2', '3', '4']
  assert report['per_class']['3'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 2.0}
  assert report['per_class']['4'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0.0}


def test_bad_matrices_are_refused():
  with pytest.raises(ValueError, match='empty'):
    classification_report.build_report(np.zeros([3, 3]), NAMES)
  with pytest.raises(ValueError, match='square'):
    classification_report.build_report(np.ones([3, 2]))
  with pytest.raises(ValueError, match='2 class names'):
    classification_report.build_report(CONFUSION, NAMES[:2])


def test_confusion_matrix_of_a_batch_skips_weight_zero_rows():
  labels = np.eye(3)[[0, 1, 2, 2]]
  logits = np.eye(3)[[0, 2, 2, 1]]
  confusion = classification_report.confusion_matrix(labels, logits, [1, 1, 0.5, 0], 3)
  np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 0, 1], [0, 0, 0.5]])


def test_write_report_writes_json_and_text(tmp_path):
  report = classification_report.build_report(CONFUSION, NAMES)
  classification_report.write_report(tmp_path / 'run', report)
  numbers = json.loads((tmp_path / 'run' / 'eval_report.json').read_text())
  assert numbers == {key: value for key, value in report.items() if key != 'text'}
  text = (tmp_path / 'run' / 'eval_report.txt').read_text()
  assert all(name in text for name in NAMES) and 'macro avg' in text and 'Confusion' in text
