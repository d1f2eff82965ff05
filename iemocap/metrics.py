"""Weighted F1 and accuracy as the 2018 code reports them (scikit-learn's definitions), in numpy."""

import numpy as np


def weighted_f1(y_true, y_pred):
  """sklearn's f1_score(average='weighted'): per-class F1 weighted by true-class support."""
  y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
  y_pred = np.asarray(y_pred).astype(np.int64).reshape(-1)
  if y_true.shape != y_pred.shape:
    raise ValueError(f'{y_true.shape[0]} labels but {y_pred.shape[0]} predictions')
  classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
  true_sum = np.bincount(y_true, minlength=classes).astype(np.float64)
  pred_sum = np.bincount(y_pred, minlength=classes).astype(np.float64)
  tp_sum = np.bincount(y_true[y_true == y_pred], minlength=classes).astype(np.float64)
  denominator = true_sum + pred_sum
  # A class neither present nor predicted scores 0, as sklearn's zero_division default does.
  f1 = np.where(denominator > 0, 2 * tp_sum / np.where(denominator > 0, denominator, 1), 0.0)
  if true_sum.sum() == 0:
    return 0.0
  return float(np.average(f1, weights=true_sum))


def accuracy(y_true, y_pred):
  y_true = np.asarray(y_true).reshape(-1)
  y_pred = np.asarray(y_pred).reshape(-1)
  return float(np.mean(y_true == y_pred))


def majority_baseline(train_labels, test_labels):
  """F1 and accuracy of always predicting the training set's most frequent class."""
  majority = int(np.argmax(np.bincount(np.asarray(train_labels, dtype=np.int64))))
  predictions = np.full(np.shape(test_labels), majority)
  return weighted_f1(test_labels, predictions), accuracy(test_labels, predictions)


def classification_metrics(labels, logits):
  """F1 and accuracy of the argmax of `logits` (N, classes)."""
  predictions = np.argmax(np.asarray(logits), axis=-1)
  return {'f1': weighted_f1(labels, predictions), 'accuracy': accuracy(labels, predictions)}
