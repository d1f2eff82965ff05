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


# What a test split is scored by, per task, in results.json's names; a population reports each
# one's mean and spread over its chosen setting's seeds.
FIGURES = {'classification': ('f1', 'accuracy'),
           'regression': ('mae', 'corr', 'acc2_has0', 'f1_has0', 'acc2_non0', 'f1_non0', 'acc7',
                          'acc2_neg0', 'f1_neg0', 'acc3', 'acc5')}
# Sets whose sentiment is a [-3, 3] score, where 7-class accuracy is reported.
SEVEN_CLASS_SETS = ('CMU-MOSI', 'CMU-MOSEI')
# CH-SIMS scores sentiment in [-1, 1] and is reported in 2, 3 and 5 classes with these upper
# class bounds (zero and below negative; negative, neutral, positive; then strongly and weakly
# either way), each bound belonging to the class below it, after clipping the predictions to
# [-1, 1]: the convention of the CH-SIMS paper's (MMSA's) evaluation, whose binary figures count a
# zero label as negative (`_neg0`), unlike the other sets' `_has0`.
SIMS_CLASS_BOUNDS = {'acc2_neg0': (0.0,), 'acc3': (-0.1, 0.1), 'acc5': (-0.7, -0.1, 0.1, 0.7)}
SIMS_FIGURES = (*SIMS_CLASS_BOUNDS, 'f1_neg0')  # None on every other set
SIMS_SETS = ('CH-SIMS',)


def pearson(a, b):
  """Pearson's r, or None where it is undefined (a constant side)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a, b = a - a.mean(), b - b.mean()
  denominator = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / denominator) if denominator > 0 else None


def regression_metrics(labels, outputs, corpus=''):
  """The 2018 `train_mosi.py` figures of (N, K) predictions, under this project's names.

  `mae` and `corr` (Pearson, the mean over columns when K > 1, None if a column is constant);
  for one target also binary accuracy and weighted F1 in both conventions papers use: `_has0`
  counts a zero label as positive (y >= 0 against prediction >= 0, the 2018 code's), `_non0`
  leaves zero labels out (y > 0 against prediction > 0, MulT's and MMSA's); `acc7`, both
  sides clipped to [-3, 3] and rounded, for the sets scored on that scale; for CH-SIMS
  (SIMS_CLASS_BOUNDS) `acc3`, `acc5` and its own binary accuracy and weighted F1, `acc2_neg0`
  and `f1_neg0`; None where a figure does not apply. With several targets
  (POM's traits) the per-target MAE and r come as lists.
  """
  labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
  outputs = np.asarray(outputs, np.float64).reshape(labels.shape)
  columns = [pearson(outputs[:, k], labels[:, k]) for k in range(labels.shape[1])]
  result = {**dict.fromkeys(FIGURES['regression']),
            'mae': float(np.mean(np.abs(outputs - labels))),
            'corr': None if None in columns else float(np.mean(columns))}
  if labels.shape[1] > 1:
    result['mae_per_target'] = np.mean(np.abs(outputs - labels), axis=0).tolist()
    result['corr_per_target'] = columns
    return result
  y, p = labels[:, 0], outputs[:, 0]
  result['acc2_has0'], result['f1_has0'] = accuracy(y >= 0, p >= 0), weighted_f1(y >= 0, p >= 0)
  nonzero = y != 0
  if nonzero.any():
    result['acc2_non0'] = accuracy(y[nonzero] > 0, p[nonzero] > 0)
    result['f1_non0'] = weighted_f1(y[nonzero] > 0, p[nonzero] > 0)
  if corpus in SEVEN_CLASS_SETS:
    result['acc7'] = accuracy(np.round(np.clip(y, -3, 3)), np.round(np.clip(p, -3, 3)))
  if corpus in SIMS_SETS:
    for key, bounds in SIMS_CLASS_BOUNDS.items():
      result[key] = accuracy(sims_classes(y, bounds), sims_classes(p, bounds))
    truth, predicted = (sims_classes(v, SIMS_CLASS_BOUNDS['acc2_neg0']) for v in (y, p))
    # A NaN output counts as the wrong class (an unused class would raise the other class's
    # precision).
    result['f1_neg0'] = weighted_f1(truth, np.where(predicted < 0, 1 - truth, predicted))
  return result


def sims_classes(scores, bounds):
  """Class indices of [-1, 1] scores: class k holds bounds[k-1] < score <= bounds[k], NaN -1.
  Compared in float32, where CH-SIMS's labels live (in float64 float32(0.1) would fall above
  0.1)."""
  clipped = np.clip(np.asarray(scores, np.float32), -1, 1)
  classes = np.digitize(clipped, np.asarray(bounds, np.float32), right=True)
  return np.where(np.isnan(clipped), -1, classes)  # NaN is no class: never a match


def test_figures(task, labels, outputs, corpus=''):
  """The figures of `FIGURES[task]` (and per-target lists) of a split's model outputs."""
  if task == 'regression':
    return regression_metrics(labels, outputs, corpus)
  return classification_metrics(labels, outputs)


def baseline_figures(task, train_labels, test_labels):
  """What a model must beat: the majority class's F1 and accuracy; for regression the MAE of
  the constant that minimises the training split's MAE (its median, per target)."""
  if task == 'regression':
    train = np.asarray(train_labels, np.float64).reshape(len(train_labels), -1)
    test = np.asarray(test_labels, np.float64).reshape(len(test_labels), -1)
    return {'baseline_mae': float(np.mean(np.abs(test - np.median(train, axis=0))))}
  majority_f1, majority_accuracy = majority_baseline(train_labels, test_labels)
  return {'majority_f1': majority_f1, 'majority_accuracy': majority_accuracy}
