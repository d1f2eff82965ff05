"""Loading and validating the processed IEMOCAP file (the 2018 `iemocap.pkl`, or its `.npz`).

Every problem with the file is a `DataError` whose message is one line naming
the problem and what to do about it; the command lines print it and exit 2.
"""

import dataclasses
import os
import pickle
import zipfile

import numpy as np

from iemocap import pickle_io
from iemocap import files
from iemocap.errors import DataError

EMOTIONS = ('happy', 'sad', 'angry', 'neutral')
SPLITS = ('train', 'valid', 'test')
# Our modality names and the keys the 2018 file stores them under.
FILE_KEYS = {'audio': 'covarep', 'visual': 'facet', 'text': 'glove', 'label': 'label'}
AUDIO_DIM = 74
VISUAL_DIM = 35
TEXT_DIM = 300
PICKLE_NAME = 'iemocap.pkl'
NPZ_NAME = 'iemocap.npz'


def normalize_emotion(spelling):
  """Maps `sad`, `b'sad'`, `"b'sad'"` (the seed's command line) and b'sad' to 'sad'.

  `bsad` is accepted too: it is what a shell makes of the seed's unquoted `--emotion=b'sad'`.
  """
  if isinstance(spelling, bytes):
    spelling = spelling.decode('latin1')
  text = str(spelling).strip()
  for _ in range(2):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'':
      text = text[1:-1]
    if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:
      text = text[2:-1]
  text = text.lower()
  if text not in EMOTIONS and text[:1] == 'b' and text[1:] in EMOTIONS:
    text = text[1:]
  if text not in EMOTIONS:
    raise DataError(f'unknown emotion {spelling!r}: choose one of {", ".join(EMOTIONS)}')
  return text


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of one emotion task, cleaned: float32 features and int64 class ids."""
  audio: np.ndarray  # (N, 74) COVAREP
  visual: np.ndarray  # (N, 35) FACET
  text: np.ndarray  # (N, T, 300) GloVe
  label: np.ndarray  # (N,) 1 = the emotion is present
  nonfinite_replaced: int = 0

  @property
  def n(self):
    return int(self.label.shape[0])

  @property
  def positive_rate(self):
    return float(np.mean(self.label == 1))

  def take(self, index):
    """The samples at `index`, as a dict of arrays (one minibatch)."""
    return {'audio': self.audio[index], 'visual': self.visual[index],
            'text': self.text[index], 'label': self.label[index]}

  def arrays(self):
    return self.take(slice(None))


@dataclasses.dataclass(frozen=True)
class Dataset:
  emotion: str
  path: str
  train: Split
  valid: Split
  test: Split

  def split(self, name):
    if name not in SPLITS:
      raise DataError(f'unknown split {name!r}: choose one of {", ".join(SPLITS)}')
    return getattr(self, name)

  @property
  def input_dims(self):
    """(audio, visual, text) feature sizes, the model's input dimensions."""
    return (self.train.audio.shape[1], self.train.visual.shape[1], self.train.text.shape[2])


def resolve_path(path):
  """The data file for `path`: the file itself, or `iemocap.npz`/`iemocap.pkl` in a directory."""
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in (NPZ_NAME, PICKLE_NAME):
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate
    raise DataError(f'no {PICKLE_NAME} or {NPZ_NAME} in directory {path}: '
                    'pass the file itself or the directory holding it')
  if not os.path.exists(path):
    raise DataError(f'data file {path} does not exist: pass the path of {PICKLE_NAME} '
                    'or of the directory holding it')
  return path


def _key(mapping, name, what, where):
  """mapping[name] where keys may be str or bytes (the Python-2 file gives either)."""
  for key in (name, name.encode('latin1')):
    if key in mapping:
      return mapping[key]
  have = sorted(k.decode('latin1') if isinstance(k, bytes) else str(k) for k in mapping)
  raise DataError(f'{what} {name!r} missing{where}; the file has: {", ".join(have) or "nothing"}')


def read_raw(path):
  """The file's nested dict, from a pickle (restricted) or an npz (no pickles allowed)."""
  path = resolve_path(path)
  if path.endswith('.npz'):
    return _read_npz(path)
  try:
    with open(path, 'rb') as f:
      raw = pickle_io.restricted_load(f)
  except pickle_io.UnsafePickleError as e:
    raise DataError(f'{path}: {e}') from None
  except EOFError:
    raise DataError(f'{path} is truncated (the pickle ends early): download or convert it again') from None
  except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
          UnicodeDecodeError, OverflowError, MemoryError) as e:
    raise DataError(f'{path} is not a readable IEMOCAP pickle ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else "corrupt data"}): '
                    'pass the processed iemocap.pkl of the 2018 code') from None
  if not isinstance(raw, dict):
    raise DataError(f'{path} holds a {type(raw).__name__}, not the dict of emotions of iemocap.pkl')
  return raw


def _read_npz(path):
  """Rebuilds the nested layout from `write_npz`'s flat names."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise DataError(f'{path} is not a readable npz ({e}): convert the pickle again '
                    'with `python -m iemocap convert`') from None
  shared = {}
  raw = {}
  for name, array in flat.items():
    parts = name.split('/')
    if len(parts) == 2:  # split/modality, features shared by every emotion
      shared.setdefault(parts[0], {})[parts[1]] = array
    elif len(parts) == 3:  # emotion/split/modality
      raw.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = array
    else:
      raise DataError(f'{path}: unexpected array name {name!r}: convert the pickle again')
  for splits in raw.values():
    for split, modalities in splits.items():
      for modality, array in shared.get(split, {}).items():
        modalities.setdefault(modality, array)
  return raw


def emotions_in(raw):
  return [e for e in EMOTIONS if e in raw or e.encode() in raw]


def _labels(array, where):
  """Class ids from a one-hot (N, 2) or binary (N,) label array."""
  if array.ndim == 2 and array.shape[1] == 2:
    finite = np.isfinite(array).all()
    if not finite or not np.isin(array, (0, 1)).all() or not (array.sum(axis=1) == 1).all():
      raise DataError(f'label{where} is not one-hot: every row of the (N, 2) array must be [1, 0] or [0, 1]')
    return np.argmax(array, axis=1).astype(np.int64)
  if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
    flat = array.reshape(-1)
    if not np.isin(flat, (0, 1)).all():
      raise DataError(f'label{where} is not binary: class ids must be 0 or 1')
    return flat.astype(np.int64)
  raise DataError(f'label{where} has shape {array.shape}: expected (N, 2) one-hot or (N,) class ids')


def _features(array, name, expect_tail, where):
  """float32 features with the expected trailing dimensions."""
  if not isinstance(array, np.ndarray) or array.dtype.kind not in 'fiub':
    kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
    raise DataError(f'{name}{where} is {kind}, not a real-valued numeric array')
  rank = 1 + len(expect_tail)
  if array.ndim != rank:
    raise DataError(f'{name}{where} has rank {array.ndim} (shape {array.shape}): expected '
                    f'(N, {", ".join(str(d) for d in expect_tail)})')
  for axis, want in enumerate(expect_tail, start=1):
    if want is not None and array.shape[axis] != want:
      raise DataError(f'{name}{where} has shape {array.shape}: dimension {axis} should be {want}')
  return np.asarray(array, dtype=np.float32)


def build_split(modalities, where):
  """A validated, cleaned Split from one `data[emotion][split]` dict."""
  if not isinstance(modalities, dict):
    raise DataError(f'{where.strip(" ()")} is a {type(modalities).__name__}, not a dict of modalities')
  arrays = {name: _key(modalities, key, 'modality', where) for name, key in FILE_KEYS.items()}
  audio = _features(arrays['audio'], 'covarep (audio)', (AUDIO_DIM,), where)
  visual = _features(arrays['visual'], 'facet (visual)', (VISUAL_DIM,), where)
  text = _features(arrays['text'], 'glove (text)', (None, TEXT_DIM), where)
  label = _labels(np.asarray(arrays['label']), where)
  sizes = {'covarep': audio.shape[0], 'facet': visual.shape[0], 'glove': text.shape[0],
           'label': label.shape[0]}
  if len(set(sizes.values())) != 1:
    raise DataError(f'modalities{where} have different sample counts '
                    f'({", ".join(f"{k} {v}" for k, v in sizes.items())}): the file is inconsistent')
  if label.shape[0] == 0:
    raise DataError(f'split{where} is empty: every split needs samples')
  if not np.isfinite(text).all():
    bad = int(np.size(text) - np.isfinite(text).sum())
    raise DataError(f'glove (text){where} has {bad} NaN/inf values; GloVe vectors are finite '
                    'in a sound file: re-create or re-download it')
  replaced = 0
  cleaned = []
  for features in (audio, visual):
    bad = ~np.isfinite(features)
    count = int(bad.sum())
    if count:
      features = np.where(bad, np.float32(0), features)
    replaced += count
    cleaned.append(features)
  return Split(audio=cleaned[0], visual=cleaned[1], text=text, label=label,
               nonfinite_replaced=replaced)


def build_dataset(raw, emotion, path):
  emotion = normalize_emotion(emotion)
  tasks = _key(raw, emotion, 'emotion', f' in {path}')
  if not isinstance(tasks, dict):
    raise DataError(f'{path}: {emotion} holds a {type(tasks).__name__}, not a dict of splits')
  splits = {}
  for name in SPLITS:
    splits[name] = build_split(_key(tasks, name, 'split', f' for {emotion} in {path}'),
                               f' ({emotion}/{name})')
  reference = splits['train']
  for name in ('valid', 'test'):
    split = splits[name]
    for what, a, b in (('covarep', reference.audio, split.audio),
                       ('facet', reference.visual, split.visual),
                       ('glove', reference.text, split.text)):
      if a.shape[1:] != b.shape[1:]:
        raise DataError(f'{what} ({emotion}) has per-sample shape {b.shape[1:]} in {name} but '
                        f'{a.shape[1:]} in train: the splits must match')
  return Dataset(emotion=emotion, path=str(path), **splits)


def load(path, emotion):
  """The three validated splits of one emotion task from the 2018 file (or its npz)."""
  path = resolve_path(path)
  return build_dataset(read_raw(path), emotion, path)


def write_npz(raw, out_path):
  """Writes a safe `.npz` copy of a raw file: features shared across emotions are stored once.

  Names are `split/modality` for features identical in every emotion and
  `emotion/split/modality` for labels and any features that differ.
  """
  flat = {}
  emotions = emotions_in(raw)
  if not emotions:
    raise DataError('nothing to convert: the file holds none of ' + ', '.join(EMOTIONS))
  for emotion in emotions:
    tasks = _key(raw, emotion, 'emotion', '')
    for split in SPLITS:
      modalities = _key(tasks, split, 'split', f' for {emotion}')
      for name, key in FILE_KEYS.items():
        array = np.asarray(_key(modalities, key, 'modality', f' ({emotion}/{split})'))
        if name == 'label':
          flat[f'{emotion}/{split}/{key}'] = array
          continue
        array = array.astype(np.float32)
        shared = f'{split}/{key}'
        if shared not in flat:
          flat[shared] = array
        elif not np.array_equal(flat[shared], array, equal_nan=True):
          flat[f'{emotion}/{split}/{key}'] = array
  files.atomic_write(out_path, lambda f: np.savez(f, **flat))
