"""What both `predict` commands share: the Predictor interface, the request, and the output file.

A backend's Predictor loads a checkpoint once and supplies `logits`; everything
else (reading and cleaning features, class names, probabilities, the .csv or
.jsonl file, written atomically) is here, once. Nothing is written until every
utterance is predicted, so a file that cannot be predicted leaves no output.
"""

import collections
import csv
import dataclasses
import io
import json
import os

import numpy as np

from engine import cli
from engine import records
from engine import state_dict
from flags.errors import ConfigError
from iemocap import data as data_lib
from iemocap import features as features_lib
from iemocap import files

FORMATS = ('.csv', '.jsonl')


# POM's traits in the 2018 train_pom.py's column order.
POM_TRAITS = ('confidence', 'passionate', 'pleasant', 'dominant', 'credible', 'vivid',
              'expertise', 'entertaining', 'reserved', 'trusting', 'relaxed', 'outgoing',
              'thorough', 'nervous', 'persuasive', 'humorous')


def class_names(config):
  """Output names in output order: the 2018 tasks' class 1 is the emotion present; a regression
  model's outputs are its sentiment, or POM's traits."""
  if config.task == 'regression':
    if config.emotion == 'sentiment':
      return ('sentiment',)
    return (POM_TRAITS if config.output_dim == len(POM_TRAITS)
            else tuple(f'trait_{i}' for i in range(config.output_dim)))
  return (f'not_{config.emotion}', config.emotion) + tuple(
      f'class_{i}' for i in range(2, config.output_dim))


def probabilities(logits):
  """Softmax over classes, in float64 (float32 logits, no overflow for any finite value)."""
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Predictions:
  features: features_lib.Features
  logits: np.ndarray  # (N, outputs), float32: class logits, or regression values
  classes: tuple  # output names
  task: str = 'classification'

  @property
  def probabilities(self):
    return probabilities(self.logits)

  @property
  def labels(self):
    """The predicted class name of each utterance; for sentiment its sign as the 2018 binary
    figures read it (a score >= 0 is positive); None for traits."""
    if self.task == 'regression':
      if self.classes != ('sentiment',):
        return None
      return ['positive' if v >= 0 else 'negative' for v in self.logits[:, 0]]
    return [self.classes[i] for i in np.argmax(self.logits, axis=1)]


def load(checkpoint_path, emotion=''):
  """(path, arrays, Config, metadata) of --checkpoint (a workdir stands for its best model).

  `emotion` is needed for a bare 2018 state_dict (it records none); for this project's
  checkpoints it may only repeat the checkpoint's own, since it names the output classes.
  """
  path = records.checkpoint_in(os.fspath(checkpoint_path))
  if emotion:
    emotion = data_lib.normalize_emotion(emotion)
  arrays, config, metadata = state_dict.load_checkpoint(path, emotion)
  if emotion and emotion != config.emotion:
    raise ConfigError(f'--emotion={emotion}, but {path} was trained for {config.emotion}, '
                      'which names its outputs: leave --emotion out')
  return path, arrays, config, metadata


class Predictor:
  """A checkpoint loaded once (see `load`) to predict any number of batches; backends implement
  `logits`."""

  def __init__(self, checkpoint_path, emotion=''):
    self.path, self.arrays, self.config, self.metadata = load(checkpoint_path, emotion)
    self.input_dims = state_dict.input_dims(self.arrays)
    self.classes = class_names(self.config)

  def logits(self, audio, visual, text):
    """(N, classes) float32 logits of cleaned float32 features, in eval mode."""
    raise NotImplementedError

  def predict_features(self, features):
    return Predictions(features, self.logits(features.audio, features.visual, features.text),
                       self.classes, self.config.task)

  def predict(self, covarep, facet, glove, ids=None):
    """Predictions for arrays in the 2018 layout, checked and cleaned as training cleans them."""
    arrays = {'covarep': covarep, 'facet': facet, 'glove': glove}
    if ids is not None:
      arrays[features_lib.ID_NAME] = np.asarray(ids)
    return self.predict_features(features_lib.from_arrays(
        {k: np.asarray(v) for k, v in arrays.items()}, self.input_dims, 'the arrays given'))

  def predict_file(self, path, split='test'):
    """Predictions for a features .npz, or for `split` of a data file the loader reads."""
    return self.predict_features(features_lib.read(path, self.input_dims, self.config.emotion,
                                                   split))


def check_output(path, overwrite):
  """Refuses, before any work, an --out of unknown format, an existing file without
  `overwrite`, or a path that cannot be written."""
  if not path:
    raise ConfigError('--out is required: the predictions file, .csv or .jsonl')
  if os.path.splitext(path)[1].lower() not in FORMATS:
    raise ConfigError(f'--out={path}: its extension chooses the format: name a .csv or .jsonl file')
  if os.path.lexists(path) and not os.path.isdir(path) and not overwrite:
    raise ConfigError(f'--out={path} exists: choose another --out, or pass --overwrite to '
                      'replace it')
  cli.check_output_file(path, '--out')


def rows(predictions):
  """One dict per utterance: id (or index), then prob_<class> in class order and prediction; a
  regression model's `value` (value_<trait> for traits) and, for sentiment, its sign."""
  features = predictions.features
  regression = predictions.task == 'regression'
  values = predictions.logits if regression else predictions.probabilities
  if regression:
    names = ['value'] if predictions.classes == ('sentiment',) else [
        f'value_{name}' for name in predictions.classes]
  else:
    names = [f'prob_{name}' for name in predictions.classes]
  labels = predictions.labels
  out = []
  for i in range(len(values)):
    row = {'id': features.ids[i]} if features.ids is not None else {'index': i}
    for name, v in zip(names, values[i]):
      row[name] = float(f'{v:.8g}')  # float32 logits: 8 digits carry all they hold
    if labels is not None:
      row['prediction'] = labels[i]
    out.append(row)
  return out


def write(path, predictions):
  """The predictions as .csv or .jsonl (by extension), written atomically."""
  table = rows(predictions)
  if path.lower().endswith('.csv'):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows(table)
    text = buffer.getvalue()
  else:
    text = ''.join(json.dumps(row) + '\n' for row in table)
  files.write_text(path, text)


@dataclasses.dataclass(frozen=True)
class Request:
  checkpoint: str
  features: str
  out: str
  emotion: str
  split: str
  batch_size: int


def prediction_request(values):
  """The Request of flags/prediction.py's flags, its output checked before any work."""
  for flag, what in (('checkpoint', 'the checkpoint, a workdir or a 2018 state_dict'),
                     ('features', 'a features .npz or a data file')):
    if not values[flag].value:
      raise ConfigError(f'--{flag} is required: {what}')
  if values.batch_size < 1:
    raise ConfigError(f'--batch_size={values.batch_size} must be >= 1')
  check_output(values.out, values.overwrite)
  return Request(checkpoint=values.checkpoint, features=values.features, out=values.out,
                 emotion=values.emotion, split=values.split, batch_size=values.batch_size)


def predict_to_file(predictor, request):
  """Predicts request.features and writes request.out; returns the summary to print."""
  predictions = predictor.predict_file(request.features, request.split)
  write(request.out, predictions)
  features = predictions.features
  return {'out': os.path.abspath(request.out), 'n': features.n, 'source': features.source,
          'counts': dict(collections.Counter(predictions.labels)),
          'replaced': features.replaced_text(), 'checkpoint': predictor.path}


def format_summary(summary):
  counts = ', '.join(f'{n} {name}' for name, n in sorted(summary['counts'].items()))
  return (f'predicted {summary["n"]} utterances of {summary["source"]} ({counts}) -> '
          f'{summary["out"]}; non-finite features set to 0: {summary["replaced"]}')
