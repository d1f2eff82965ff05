"""Weighted F1 and accuracy as the 2018 code computes them, checked against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as sk

from iemocap import metrics


@pytest.mark.parametrize('seed', range(20))
def test_weighted_f1_and_accuracy_equal_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 300))
  y_true = (rng.random(n) < rng.random()).astype(int)
  y_pred = (rng.random(n) < rng.random()).astype(int)
  assert metrics.weighted_f1(y_true, y_pred) == pytest.approx(
      sk.f1_score(y_true, y_pred, average='weighted', zero_division=0), abs=1e-15)
  assert metrics.accuracy(y_true, y_pred) == sk.accuracy_score(y_true, y_pred)


@pytest.mark.parametrize('y_true, y_pred', [
    ([0, 0, 0, 0], [0, 0, 0, 0]),
    ([1, 1, 1], [0, 0, 0]),
    ([0, 1, 0, 1], [1, 1, 1, 1]),
    ([0, 0, 1], [0, 0, 0]),
    ([1], [1]),
])
def test_degenerate_cases_equal_sklearn(y_true, y_pred):
  assert metrics.weighted_f1(y_true, y_pred) == pytest.approx(
      sk.f1_score(y_true, y_pred, average='weighted', zero_division=0), abs=1e-15)


def test_majority_baseline_predicts_the_training_majority():
  train = np.array([0] * 8 + [1] * 2)
  test = np.array([0, 0, 0, 1])
  f1, acc = metrics.majority_baseline(train, test)
  assert acc == 0.75
  assert f1 == pytest.approx(sk.f1_score(test, np.zeros(4, int), average='weighted',
                                         zero_division=0))


def test_classification_metrics_use_argmax_of_logits():
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0]])
  result = metrics.classification_metrics(np.array([0, 1, 1]), logits)
  assert result['accuracy'] == pytest.approx(2 / 3)
  assert result['f1'] == pytest.approx(sk.f1_score([0, 1, 1], [0, 1, 0], average='weighted'))
