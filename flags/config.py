"""The resolved configuration of one run: a frozen, validated record saved with every run."""

import dataclasses
import hashlib
import json
import math
import numbers

from flags.errors import ConfigError
from flags.presets import HPARAMS, INT_HPARAMS
from iemocap.data import normalize_emotion, task_of
from iemocap.errors import DataError


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's result (the workdir and run modes aside)."""
  emotion: str  # the target: an IEMOCAP emotion, or `sentiment` / `traits` (regression)
  audio_hidden: int
  video_hidden: int
  text_hidden: int
  audio_dropout: float
  video_dropout: float
  text_dropout: float
  factor_lr: float
  lr: float
  rank: int
  batch_size: int
  weight_decay: float
  data_path: str = ''  # empty: the synthetic stand-in
  workdir: str = ''  # empty: runs/<backend>-<emotion>-<fingerprint>
  epochs: int = 500
  patience: int = 20
  output_dim: int = 0  # 0: the target's (2 classes; 1 sentiment score); traits need theirs
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.emotion, (str, bytes)):
      raise ConfigError(f'emotion must be a name, got {self.emotion!r}')
    try:
      object.__setattr__(self, 'emotion', normalize_emotion(self.emotion))
    except DataError as e:
      raise ConfigError(str(e)) from None
    for name in ('data_path', 'workdir'):
      if not isinstance(getattr(self, name), str):
        raise ConfigError(f'{name} must be a path (a string), got {getattr(self, name)!r}')
    if self.output_dim == 0 and self.emotion != 'traits':
      object.__setattr__(self, 'output_dim', 2 if self.task == 'classification' else 1)
    for name in INT_HPARAMS + ('epochs', 'patience', 'output_dim', 'seed'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f'{name} must be a whole number, got {value!r}')
      if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and value == int(value)):
          raise ConfigError(f'{name} must be a whole number, got {value!r}')
        object.__setattr__(self, name, int(value))
      else:
        object.__setattr__(self, name, int(value))
    for name in ('audio_dropout', 'video_dropout', 'text_dropout', 'factor_lr', 'lr',
                 'weight_decay'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f'{name} must be a number, got {value!r}')
      if not math.isfinite(value):
        raise ConfigError(f'{name}={value!r} must be a finite number')
      object.__setattr__(self, name, float(value))
    rules = [
        ('audio_hidden', self.audio_hidden >= 1, 'must be >= 1'),
        ('video_hidden', self.video_hidden >= 1, 'must be >= 1'),
        ('text_hidden', self.text_hidden >= 2, 'must be >= 2 (the text output is text_hidden // 2)'),
        ('rank', self.rank >= 1, 'must be >= 1'),
        ('batch_size', self.batch_size >= 2, 'must be >= 2 (BatchNorm cannot train on one sample)'),
        ('epochs', self.epochs >= 1, 'must be >= 1'),
        ('patience', self.patience >= 1, 'must be >= 1'),
        ('output_dim', self.output_dim >= 2, 'must be >= 2 (emotion absent, present)')
        if self.task == 'classification' else
        ('output_dim', self.output_dim >= 1, f'must be >= 1 (one per {self.emotion} value)'),
        ('seed', 0 <= self.seed < 2**32, 'must be in [0, 2**32) (JAX keys hold 32 bits)'),
        ('factor_lr', self.factor_lr > 0, 'must be > 0'),
        ('lr', self.lr > 0, 'must be > 0'),
        ('weight_decay', self.weight_decay >= 0, 'must be >= 0'),
    ]
    for name in ('audio_dropout', 'video_dropout', 'text_dropout'):
      rules.append((name, 0.0 <= getattr(self, name) < 1.0, 'must be in [0, 1)'))
    for name, ok, rule in rules:
      if not ok:
        raise ConfigError(f'{name}={getattr(self, name)!r} {rule}')

  @property
  def task(self):
    """'classification' (an IEMOCAP emotion) or 'regression' (sentiment, traits)."""
    return task_of(self.emotion)

  @property
  def text_out(self):
    return self.text_hidden // 2

  def hparams(self):
    return {name: getattr(self, name) for name in HPARAMS}

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values):
    if not isinstance(values, dict):
      raise ConfigError(f'saved configuration is a {type(values).__name__}, not a record of '
                        'settings: it was not written by this project')
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f'saved configuration has unknown fields {unknown}: it was written by '
                        'another version of this project')
    try:
      return cls(**values)
    except TypeError as e:
      raise ConfigError(f'saved configuration is incomplete ({e})') from None

  def fingerprint(self):
    """A short hash of everything but the workdir: the default workdir's suffix."""
    values = {k: v for k, v in self.to_dict().items() if k != 'workdir'}
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]

  def __str__(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)
