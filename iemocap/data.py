"""Loading and validating the processed IEMOCAP file (the 2018 `iemocap.pkl`, or its `.npz`).

Every problem with the file is a `DataError` whose message is one line naming
the problem and what to do about it; the command lines print it and exit 2.
"""

import dataclasses
import os
import pickle
import warnings
import zipfile
import zlib

import numpy as np

from iemocap import files
from iemocap import pickle_io
from iemocap.errors import DataError

EMOTIONS = ('happy', 'sad', 'angry', 'neutral')
# What a run learns: an IEMOCAP emotion (binary classification), or a regression set's target:
# one sentiment score (CMU-MOSI, CMU-MOSEI, CH-SIMS) or every trait of POM at once.
REGRESSION_TARGETS = ('sentiment', 'traits')
TARGETS = EMOTIONS + REGRESSION_TARGETS
SPLITS = ('train', 'valid', 'test')
# Our modality names and the keys the 2018 file stores them under.
FILE_KEYS = {'audio': 'covarep', 'visual': 'facet', 'text': 'glove', 'label': 'label'}
AUDIO_DIM = 74
VISUAL_DIM = 35
TEXT_DIM = 300
PICKLE_NAME = 'iemocap.pkl'
NPZ_NAME = 'iemocap.npz'


def normalize_emotion(spelling):
  """Maps `sad`, `b'sad'`, `"b'sad'"` (the seed's command line) and b'sad' to 'sad'; a
  regression target (`sentiment`, `traits`) is kept as it is.

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
  if text not in TARGETS and text[:1] == 'b' and text[1:] in EMOTIONS:
    text = text[1:]
  if text not in TARGETS:
    raise DataError(f'unknown emotion {spelling!r}: choose one of {", ".join(EMOTIONS)} '
                    f'(IEMOCAP), or {" or ".join(REGRESSION_TARGETS)} (regression sets)')
  return text


def task_of(target):
  """'classification' for an IEMOCAP emotion, 'regression' for a regression set's target."""
  return 'regression' if target in REGRESSION_TARGETS else 'classification'


@dataclasses.dataclass(frozen=True)
class Replaced:
  """NaN and +-inf values zeroed in one modality at load, kept so runs can report them."""
  nan: int = 0
  inf: int = 0  # values beyond float32's range count here: float32 holds them as inf

  @property
  def total(self):
    return self.nan + self.inf

  def __str__(self):
    return f'{self.nan} NaN and {self.inf} inf' if self.total else '0'


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of one task, cleaned: float32 features; int64 class ids for an emotion, float32
  targets for regression (the dtype tells the backends' loss which it is)."""
  audio: np.ndarray  # (N, 74) COVAREP (other sizes in other sets)
  visual: np.ndarray  # (N, 35) FACET
  text: np.ndarray  # (N, T, 300) GloVe (BERT features in MMSA files)
  label: np.ndarray  # (N,) 1 = the emotion is present; regression: (N, K) float32
  audio_replaced: Replaced = Replaced()
  visual_replaced: Replaced = Replaced()

  @property
  def n(self):
    return int(self.label.shape[0])

  @property
  def nonfinite_replaced(self):
    return self.audio_replaced.total + self.visual_replaced.total

  def replaced_text(self):
    """`replaced 12 NaN and 3 inf in covarep, 0 in facet`: what load zeroed in this split."""
    return f'replaced {self.audio_replaced} in covarep, {self.visual_replaced} in facet'

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
  emotion: str  # the target: an IEMOCAP emotion, or a regression set's (see TARGETS)
  path: str
  train: Split
  valid: Split
  test: Split
  corpus: str = 'IEMOCAP'  # the set the file holds: CMU-MOSI, CMU-MOSEI, CH-SIMS, POM, ...

  @property
  def task(self):
    return task_of(self.emotion)

  @property
  def outputs(self):
    """The model outputs the task needs: 2 classes, or one per regression target column."""
    return 2 if self.task == 'classification' else int(self.train.label.shape[1])

  @property
  def loss_terms(self):
    """Loss terms per utterance a reported loss averages over: 1, or each regression target
    (train_pom.py reports its summed L1 per utterance and per trait)."""
    return 1 if self.task == 'classification' else self.outputs

  def mean_loss(self, loss_sum, split):
    """A split's summed loss as it is reported: per utterance and per loss term. Keeps the sum's
    type (a population's float32 array stays one)."""
    return loss_sum / (self.split(split).n * self.loss_terms)

  def split(self, name):
    if name not in SPLITS:
      raise DataError(f'unknown split {name!r}: choose one of {", ".join(SPLITS)}')
    return getattr(self, name)

  @property
  def input_dims(self):
    """(audio, visual, text) feature sizes, the model's input dimensions."""
    return (self.train.audio.shape[1], self.train.visual.shape[1], self.train.text.shape[2])

  def replaced_lines(self):
    """One log line per split (train, valid, test) saying how many non-finite feature values
    load zeroed, e.g. `sad/train: replaced 12 NaN and 3 inf in covarep, 0 in facet`."""
    return [f'{self.emotion}/{name}: {self.split(name).replaced_text()}' for name in SPLITS]


MULT_NAME = 'iemocap_data.pkl'  # MulT / MultiBench's aligned IEMOCAP file


def resolve_path(path):
  """The data file for `path`: the file itself; in a directory `iemocap.npz`, `iemocap.pkl` or
  `iemocap_data.pkl`, else the directory itself if it holds CMU-SDK `.csd` files; or a
  comma-separated list of `.csd` files, returned as given."""
  path = os.fspath(path)
  if ',' in path and not os.path.lexists(path):
    for part in path.split(','):
      if not os.path.isfile(part):
        raise DataError(f'{part or "an empty name"} (in the comma-separated list {path}) is not '
                        'a file: pass one .csd file per modality and one of labels')
    return path
  if os.path.isdir(path):
    for name in (NPZ_NAME, PICKLE_NAME, MULT_NAME):
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate
      if os.path.lexists(candidate):
        raise DataError(f'{candidate} is not a regular file (a directory or a broken link): '
                        'pass the data file itself')
    if any(name.endswith('.csd') for name in os.listdir(path)):
      return path
    raise DataError(f'no {PICKLE_NAME} or {NPZ_NAME} in directory {path} (nor {MULT_NAME} or '
                    '.csd files): pass the file itself or the directory holding it')
  if not os.path.exists(path):
    raise DataError(f'data file {path} does not exist: pass the path of {PICKLE_NAME} '
                    'or of the directory holding it')
  if not os.path.isfile(path):
    # A FIFO or a device would block the read or never end it.
    raise DataError(f'{path} is not a regular file: pass the path of {PICKLE_NAME} '
                    'or of the directory holding it')
  return path


def _key(mapping, name, what, where):
  """mapping[name] where keys may be str or bytes (the Python-2 file gives either)."""
  found = [key for key in (name, name.encode('latin1')) if key in mapping]
  if len(found) == 2:
    raise DataError(f'{what} {name!r} is stored twice{where}, under a str and a bytes key: '
                    'keep one of them')
  if found:
    return mapping[found[0]]
  have = sorted(k.decode('latin1') if isinstance(k, bytes) else str(k) for k in mapping)
  raise DataError(f'{what} {name!r} missing{where}; the file has: {", ".join(have) or "nothing"}')


def read_raw(path):
  """The file's nested dict, from a pickle (restricted) or an npz (no pickles allowed)."""
  path = resolve_path(path)
  if path.endswith('.npz'):
    return nest_npz_arrays(read_npz_arrays(path), path)
  raw = read_pickle(path)
  if not isinstance(raw, dict):
    raise DataError(f'{path} holds a {type(raw).__name__}, not the dict of emotions of iemocap.pkl')
  return raw


def read_pickle(path):
  """Whatever a data pickle holds, through the restricted unpickler; every failure one line."""
  try:
    with open(path, 'rb') as f:
      return pickle_io.restricted_load(f)
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror or e}): check the path and its '
                    'permissions') from None
  except pickle_io.UnsafePickleError as e:
    raise DataError(f'{path}: {e}') from None
  except EOFError:
    if os.path.getsize(path) == 0:
      raise DataError(f'{path} is empty: download or convert it again') from None
    raise DataError(f'{path} is truncated (the pickle ends early): download or convert it again') from None
  except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
          UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as e:
    raise DataError(f'{path} is not a readable IEMOCAP pickle ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else "corrupt data"}): '
                    'pass the processed iemocap.pkl of the 2018 code') from None


_NPZ_FIX = 'convert the pickle again with `python -m iemocap convert --overwrite`'
# Deflate cannot expand data more than 1032-fold: a member that claims more is lying.
_DEFLATE_MAX_RATIO = 1032


def read_npz_arrays(path, fix=_NPZ_FIX):
  """{member name without .npy: array} of an npz, every member checked before it is read and
  none unpickled; `fix` ends each error's line (what to do about a damaged file)."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
          NotImplementedError) as e:
    raise DataError(f'{path} is not a readable npz (zip) archive ({e}): {fix}') from None
  flat = {}
  with archive:
    archive_size = os.path.getsize(path)
    for info in archive.infolist():
      if not info.filename.endswith('.npy'):
        raise DataError(f'{path}: member {info.filename} is not a .npy array: {fix}')
      flat[info.filename[:-4]] = _read_member(archive, info, archive_size,
                                              f'{path}: member {info.filename}', fix)
  return flat


def nest_npz_arrays(flat, path):
  """The nested layout of the 2018 file from `write_npz`'s flat names."""
  shared = {}
  raw = {}
  for name, array in flat.items():
    parts = name.split('/')
    if len(parts) == 2:  # split/modality, features shared by every emotion
      shared.setdefault(parts[0], {})[parts[1]] = array
    elif len(parts) == 3:  # emotion/split/modality
      raw.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = array
    else:
      raise DataError(f'{path}: unexpected array name {name!r}: {_NPZ_FIX}')
  for splits in raw.values():
    for split, modalities in splits.items():
      for modality, array in shared.get(split, {}).items():
        modalities.setdefault(modality, array)
  return raw


def _read_member(archive, info, archive_size, where, fix):
  """One .npy member, its header checked against the bytes the archive holds first.

  numpy allocates the shape a header declares before reading a byte, so a corrupt header in a
  small file would otherwise end in a MemoryError (or in swapping).
  """
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise DataError(f'{where} uses zip compression method {info.compress_type}, not stored or '
                    f'deflated as numpy writes: {fix}')
  ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
  holds = min(info.file_size, ratio * min(info.compress_size, archive_size - info.header_offset))
  try:
    with archive.open(info) as member:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a Python-2 header warns, and reads the same
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
          shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
          shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
          raise DataError(f'{where} is .npy format {version[0]}.{version[1]}, which numpy writes '
                          f'only for unusual dtypes: {fix}')
      data_bytes = holds - member.tell()
    if dtype.hasobject:
      raise DataError(f'{where} holds Python objects (dtype {dtype}), which only unpickling '
                      f'could read: {fix}')
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared != data_bytes:
      only = 'only ' if declared > data_bytes else ''
      raise DataError(f'{where} declares shape {shape} of {dtype} ({declared} bytes) but the file '
                      f'holds {only}{max(data_bytes, 0)} bytes for it: the file is corrupt or '
                      f'truncated: {fix}')
    with archive.open(info) as member:
      return np.lib.format.read_array(member, allow_pickle=False)
  except DataError:
    raise
  except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, NotImplementedError,
          MemoryError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f'{where} is unreadable ({reason}): the file is corrupt or truncated: '
                    f'{fix}') from None


def emotions_in(raw):
  return [e for e in EMOTIONS if e in raw or e.encode() in raw]


def _labels(array, where):
  """Class ids from a numeric one-hot (N, 2) or binary (N,) label array."""
  if not isinstance(array, np.ndarray):
    raise DataError(f'label{where} is {type(array).__name__}, not an array: expected a numeric '
                    'one-hot (N, 2) array or (N,) class ids 0/1')
  if array.dtype.kind not in 'biuf':
    raise DataError(f'label{where} has dtype {array.dtype}: expected a numeric one-hot (N, 2) '
                    'array or (N,) class ids 0/1 (re-create the labels as numbers)')
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


def _check_both_classes(label, where):
  """Refuses a split whose labels hold one class; train, valid and test alike.

  Train: there is nothing to learn. Test: weighted F1 on one class is perfect for predicting
  it everywhere and says nothing about the model. Valid: its loss chooses the best epoch, and on
  one class the lowest loss belongs to the model that predicts that class everywhere; a warning
  would let the run go on and report that choice, so valid is refused like the others.
  """
  classes = np.unique(label)
  if classes.size == 1:
    present = int(classes[0])
    raise DataError(f'label{where} holds one class only: all {label.size} samples are class '
                    f'{present} (emotion {"present" if present else "absent"}); every split needs '
                    'both classes to train or to score F1: fix the file or its split')


def feature_array(array, name, expect_tail, where):
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
  with np.errstate(over='ignore'):  # beyond float32's range becomes inf, zeroed and counted
    return np.asarray(array, dtype=np.float32)


def build_split(modalities, where):
  """A validated, cleaned Split from one `data[emotion][split]` dict."""
  if not isinstance(modalities, dict):
    raise DataError(f'{where.strip(" ()")} is a {type(modalities).__name__}, not a dict of modalities')
  arrays = {name: _key(modalities, key, 'modality', where) for name, key in FILE_KEYS.items()}
  audio = feature_array(arrays['audio'], 'covarep (audio)', (AUDIO_DIM,), where)
  visual = feature_array(arrays['visual'], 'facet (visual)', (VISUAL_DIM,), where)
  text = feature_array(arrays['text'], 'glove (text)', (None, TEXT_DIM), where)
  label = _labels(arrays['label'], where)
  sizes = {'covarep': audio.shape[0], 'facet': visual.shape[0], 'glove': text.shape[0],
           'label': label.shape[0]}
  if len(set(sizes.values())) != 1:
    raise DataError(f'modalities{where} have different sample counts '
                    f'({", ".join(f"{k} {v}" for k, v in sizes.items())}): the file is inconsistent')
  if label.shape[0] == 0:
    raise DataError(f'split{where} is empty: every split needs samples')
  if text.shape[1] == 0:
    raise DataError(f'glove (text){where} has 0 time steps (shape {text.shape}): every utterance '
                    'needs at least one word vector')
  _check_both_classes(label, where)
  audio, visual, audio_replaced, visual_replaced = clean_features(audio, visual, text, where)
  return Split(audio=audio, visual=visual, text=text, label=label,
               audio_replaced=audio_replaced, visual_replaced=visual_replaced)


def clean_features(audio, visual, text, where):
  """(audio, visual, audio Replaced, visual Replaced): NaN and inf in COVAREP and FACET zeroed and
  counted; non-finite GloVe refused. What training and prediction both do to features."""
  if not np.isfinite(text).all():
    bad = int(np.size(text) - np.isfinite(text).sum())
    raise DataError(f'glove (text){where} has {bad} NaN/inf values; GloVe vectors are finite '
                    'in a sound file: re-create or re-download it')
  cleaned = []
  for features in (audio, visual):
    nan, inf = np.isnan(features), np.isinf(features)
    replaced = Replaced(nan=int(nan.sum()), inf=int(inf.sum()))
    if replaced.total:
      features = np.where(nan | inf, np.float32(0), features)
    cleaned.append((features, replaced))
  (audio, audio_replaced), (visual, visual_replaced) = cleaned
  return audio, visual, audio_replaced, visual_replaced


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


def write_npz(raw, out_path, source='the data', overwrite=False):
  """Writes a safe `.npz` copy of a raw file: features shared across emotions are stored once.

  Every emotion in `raw` is validated as `load` validates it before anything is written, so
  no npz exists that `load` would refuse. An existing `out_path` is kept unless `overwrite`,
  as `synth` keeps an existing iemocap.pkl.

  Names are `split/modality` for features identical in every emotion and
  `emotion/split/modality` for labels and any features that differ.
  """
  out_path = os.fspath(out_path)
  if os.path.lexists(out_path) and not overwrite:
    raise DataError(f'{out_path} exists: choose another --out, or pass --overwrite to replace it')
  emotions = emotions_in(raw)
  if not emotions:
    raise DataError(f'nothing to convert: {source} holds none of ' + ', '.join(EMOTIONS))
  for emotion in emotions:
    build_dataset(raw, emotion, source)
  flat = {}
  for emotion in emotions:
    tasks = _key(raw, emotion, 'emotion', '')
    for split in SPLITS:
      modalities = _key(tasks, split, 'split', f' for {emotion}')
      for name, key in FILE_KEYS.items():
        array = _key(modalities, key, 'modality', f' ({emotion}/{split})')
        if name == 'label':
          flat[f'{emotion}/{split}/{key}'] = array
          continue
        with np.errstate(over='ignore'):  # as load casts: inf, zeroed and counted at load
          array = array.astype(np.float32)
        shared = f'{split}/{key}'
        if shared not in flat:
          flat[shared] = array
        elif not np.array_equal(flat[shared], array, equal_nan=True):
          flat[f'{emotion}/{split}/{key}'] = array
  try:
    files.atomic_write(out_path, lambda f: np.savez(f, **flat))
  except OSError as e:
    raise write_error(out_path, e, 'choose another --out') from None


def write_error(path, error, fix):
  """The one-line DataError for an OSError met writing `path`."""
  if isinstance(error, (FileExistsError, NotADirectoryError)):  # os.makedirs met a file
    reason = 'a part of its directory is a file'
  else:
    reason = error.strerror or str(error)
  return DataError(f'cannot write {path} ({reason}): {fix}')
