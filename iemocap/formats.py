"""Which processed-feature file a user passed, read from its content, and loading it.

Formats (README.md has where users get each; WORKSPACE.md what was checked against sources):

* `lmf2018-iemocap`: the 2018 `iemocap.pkl` (or its npz): data[emotion][split][covarep|facet|
  glove|label]. Loaded by `data.build_dataset`.
* `lmf2018-regression`: the 2018 MOSI / POM pickles: data[split][covarep|facet|glove|label],
  audio and visual already one vector per utterance, float labels.
* `mult`: MulT / MultiBench (`iemocap_data.pkl`, `mosi_data.pkl`, `mosei_senti_data.pkl`, aligned
  or not): data[split][vision|audio|text|labels(|id)], sequences (N, T, D).
* `mmsa`: MMSA (`aligned_50.pkl`, `unaligned_50.pkl`, `unaligned_39.pkl`): data[split][raw_text|
  audio|vision|id|text|text_bert|audio_lengths|vision_lengths|annotations|regression_labels...].
* `csd`: CMU-SDK computational sequences, one `.csd` per modality plus labels (`iemocap.csd`).

IEMOCAP files become the `data.Dataset` the trainers take; the others become a `RegressionSet`
that `python -m iemocap inspect` reports and the trainers refuse (regression is the next step).
"""

import dataclasses
import hashlib
import os

import numpy as np

from iemocap import csd
from iemocap import data as data_lib
from iemocap.data import DataError, Replaced

LMF2018_IEMOCAP = 'lmf2018-iemocap'
LMF2018_REGRESSION = 'lmf2018-regression'
MULT = 'mult'
MMSA = 'mmsa'
CSD = 'csd'
HDF5_MAGIC = b'\x89HDF\r\n\x1a\n'

# MulT's eval_iemocap names the label axis ["Neutral", "Happy", "Sad", "Angry"].
MULT_EMOTION_ORDER = ('neutral', 'happy', 'sad', 'angry')
MMSA_KEYS = ('raw_text', 'audio', 'vision', 'id', 'text', 'text_bert', 'annotations',
             'regression_labels')
# The splits of the papers that introduced each set's processed features (train, valid, test).
PAPER_SPLITS = {'IEMOCAP': (2717, 798, 938), 'CMU-MOSI': (1284, 229, 686),
                'CMU-MOSEI': (16326, 1871, 4659), 'CH-SIMS': (1368, 456, 457),
                'POM': (600, 100, 203)}
# Feature sizes (audio, visual) that name a set, as the processed releases have them.
_SETS_BY_DIMS = {(5, 20): 'CMU-MOSI', (74, 47): 'CMU-MOSI', (74, 46): 'CMU-MOSI',
                 (74, 35): 'CMU-MOSEI', (33, 709): 'CH-SIMS'}
# SHA-256 of MMSA's released files as a third-party fetch script quotes MMSA's README; MOSEI's
# sum is also on the SemMSA mirror's page. Aligned files: no published sum found.
MMSA_SHA256 = {
    ('CMU-MOSI', 'unaligned_50.pkl'):
        '78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524',
    ('CMU-MOSEI', 'unaligned_50.pkl'):
        'ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f',
    ('CH-SIMS', 'unaligned_39.pkl'):
        'c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f',
}


@dataclasses.dataclass(frozen=True)
class Source:
  """A detected file: its format, the set it holds, and what was read (a dict, or csd paths)."""
  path: str
  format: str
  dataset: str  # IEMOCAP, CMU-MOSI, CMU-MOSEI, CH-SIMS, POM, or 'unknown'
  raw: object

  @property
  def is_iemocap(self):
    return self.dataset == 'IEMOCAP'

  @property
  def task(self):
    if self.is_iemocap:
      return 'IEMOCAP per-emotion binary classification'
    if self.dataset == 'POM':
      return 'POM speaker-trait regression'
    return f'{self.dataset} sentiment regression'


@dataclasses.dataclass(frozen=True)
class RegressionSplit:
  """One split of a regression set: per-utterance audio/visual vectors, text sequences."""
  audio: np.ndarray  # (N, Da) float32, time-averaged over real steps, non-finite zeroed
  visual: np.ndarray  # (N, Dv)
  text: np.ndarray  # (N, T, Dt) float32 as stored (GloVe, or BERT features in MMSA files)
  label: np.ndarray  # (N, K) float32
  ids: tuple = ()
  audio_replaced: Replaced = Replaced()
  visual_replaced: Replaced = Replaced()
  text_nonfinite: int = 0

  @property
  def n(self):
    return int(self.label.shape[0])


@dataclasses.dataclass(frozen=True)
class RegressionSet:
  source: Source
  splits: dict  # name -> RegressionSplit
  notes: tuple = ()  # the traps inspect reports (BERT text, padding, lengths, folds)


def _get(mapping, name):
  for key in (name, name.encode()):
    if key in mapping:
      return mapping[key]
  return None


def _has(mapping, *names):
  return isinstance(mapping, dict) and all(_get(mapping, n) is not None for n in names)


def _describe_keys(mapping):
  return ', '.join(sorted(k.decode('latin1') if isinstance(k, bytes) else str(k)
                          for k in mapping)) or 'nothing'


def read(path):
  """The detected `Source` of a path (a file, a directory, or a comma-separated .csd list)."""
  path = data_lib.resolve_path(path)
  if os.path.isdir(path) or (',' in path and not os.path.exists(path)):
    return Source(path, CSD, csd.dataset_name(path), csd.role_paths(path))
  with open(path, 'rb') as f:
    head = f.read(8)
  if head == HDF5_MAGIC:
    raise DataError(f'{path} is an HDF5 file (a CMU-SDK .csd holds one modality): pass the '
                    'directory holding the audio, visual, text and labels .csd files, or them '
                    'as a comma-separated list')
  if head[:4] == b'PK\x03\x04':  # a zip: only the 2018 file's npz, never unpickled
    raw = data_lib.nest_npz_arrays(data_lib.read_npz_arrays(path), path)
    return Source(path, LMF2018_IEMOCAP, 'IEMOCAP', raw)
  if path.endswith('.npz'):
    return Source(path, LMF2018_IEMOCAP, 'IEMOCAP', data_lib.read_raw(path))
  raw = data_lib.read_pickle(path)
  if not isinstance(raw, dict):
    raise DataError(f'{path} holds a {type(raw).__name__}, not the dict of emotions of iemocap.pkl '
                    'nor the dict of splits of the MulT, MMSA or 2018 MOSI/POM files')
  if data_lib.emotions_in(raw):
    return Source(path, LMF2018_IEMOCAP, 'IEMOCAP', raw)
  splits = [_get(raw, s) for s in data_lib.SPLITS]
  if all(isinstance(s, dict) for s in splits):
    first = splits[0]
    if _has(first, 'vision', 'audio', 'text', 'labels'):
      return Source(path, MULT, _mult_dataset(first, path), raw)
    if _has(first, 'regression_labels') or _has(first, 'text_bert'):
      return Source(path, MMSA, _mmsa_dataset(first, path), raw)
    if _has(first, 'covarep', 'facet', 'glove', 'label'):
      return Source(path, LMF2018_REGRESSION, _lmf2018_dataset(first, path), raw)
    raise DataError(f'{path}: split train holds {_describe_keys(first)}, which is none of the '
                    'known layouts (MulT: vision, audio, text, labels; MMSA: text, audio, vision, '
                    'regression_labels, ...; 2018 MOSI/POM: covarep, facet, glove, label)')
  raise DataError(f'{path} holds a dict of {_describe_keys(raw)}: expected the emotions of '
                  'iemocap.pkl or the splits train, valid, test of the MulT, MMSA or 2018 '
                  'MOSI/POM files')


def _shape(array):
  return getattr(array, 'shape', None)


def _dims_set(audio, visual, path):
  """The set named by (audio, visual) feature sizes, else by the file name, else 'unknown'."""
  audio_shape, visual_shape = _shape(audio), _shape(visual)
  if audio_shape and visual_shape:
    found = _SETS_BY_DIMS.get((audio_shape[-1], visual_shape[-1]))
    if found:
      return found
  name = os.path.basename(path).lower()
  for key, value in (('mosei', 'CMU-MOSEI'), ('mosi', 'CMU-MOSI'), ('sims', 'CH-SIMS'),
                     ('pom', 'POM')):
    if key in name or key in os.path.dirname(os.path.abspath(path)).lower():
      return value
  return 'unknown'


def _mult_dataset(split, path):
  if (_shape(_get(split, 'labels')) or ())[1:] == (4, 2):
    return 'IEMOCAP'
  return _dims_set(_get(split, 'audio'), _get(split, 'vision'), path)


def _mmsa_dataset(split, path):
  if _get(split, 'regression_labels_T') is not None:
    return 'CH-SIMS'
  return _dims_set(_get(split, 'audio'), _get(split, 'vision'), path)


def _lmf2018_dataset(split, path):
  label = _get(split, 'label')
  if _shape(label) and len(label.shape) == 2 and label.shape[1] > 1:
    return 'POM'
  return _dims_set(_get(split, 'covarep'), _get(split, 'facet'), path)


def time_mean(sequences, lengths=None):
  """Per-utterance vectors (N, D) from sequences (N, T, D).

  Without lengths: the plain mean over all T steps, zero padding included, as the 2018 file's
  vectors were made from the aligned 20-step sequences (so a MulT IEMOCAP file gives the 2018
  task). With lengths: the mean over the first `length` steps only (MMSA pads at the end; its own
  loader averages over the padding too, which shrinks short utterances' vectors toward 0). A
  length of 0 gives a zero vector. Non-finite steps stay non-finite, to be zeroed and counted
  per vector entry as the 2018 file's values are (regression files zero them first:
  `step_means`).
  """
  sequences = np.asarray(sequences)
  if lengths is None:
    with np.errstate(invalid='ignore', over='ignore'):
      return sequences.mean(axis=1, dtype=np.float64).astype(np.float32)
  steps = np.arange(sequences.shape[1])[None, :, None] < lengths[:, None, None]
  with np.errstate(invalid='ignore', over='ignore'):
    total = np.where(steps, sequences, 0).sum(axis=1, dtype=np.float64)
    return (total / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def step_means(sequences, lengths=None):
  """(vectors, Replaced) of a regression file's sequences: non-finite step values are zeroed and
  counted first, as MulT's and MMSA's own loaders zero their audio's -inf, then `time_mean`; so
  one -inf step does not erase a whole utterance's feature. (MulT's IEMOCAP file keeps the 2018
  rule instead, which makes it the 2018 file's task.)"""
  sequences = np.asarray(sequences)
  finite = np.isfinite(sequences)
  if finite.all():
    return time_mean(sequences, lengths), Replaced()
  nan = int(np.isnan(sequences).sum())
  replaced = Replaced(nan=nan, inf=int(finite.size - finite.sum()) - nan)
  return time_mean(np.where(finite, sequences, np.float32(0)), lengths), replaced


def _array(split, name, where, kinds='fiub', rank=None):
  array = _get(split, name)
  if array is None:
    raise DataError(f'{name} missing{where}; the split has: {_describe_keys(split)}')
  if isinstance(array, list):
    array = np.asarray(array) if all(isinstance(x, (int, float, np.generic)) for x in array) else array
  if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds:
    kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
    raise DataError(f'{name}{where} is {kind}, not a numeric array')
  if rank is not None and array.ndim != rank:
    raise DataError(f'{name}{where} has shape {array.shape}: expected rank {rank}')
  return array


def strings(array, name, where):
  """An id or raw_text array as a tuple of str; anything but str/bytes (or rows of them) is
  refused: these object arrays are read, never executed, and hold nothing else in a sound file."""
  if isinstance(array, np.ndarray) and array.dtype.kind in 'US':
    flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array[:, None]
  elif isinstance(array, (np.ndarray, list)):
    rows = list(array)
    flat = []
    for row in rows:
      items = list(row) if isinstance(row, (np.ndarray, list, tuple)) else [row]
      if not all(isinstance(x, (str, bytes, np.str_, np.bytes_)) for x in items):
        bad = next(x for x in items if not isinstance(x, (str, bytes, np.str_, np.bytes_)))
        raise DataError(f'{name}{where} holds a {type(bad).__name__}: ids and raw text must be '
                        'strings; the file is damaged or not what it claims')
      flat.append(items)
  else:
    raise DataError(f'{name}{where} is a {type(array).__name__}, not an array of strings')
  return tuple(' '.join(x.decode('utf-8', 'replace') if isinstance(x, bytes) else str(x)
                        for x in row) for row in flat)


def _lengths(split, name, n, steps, where):
  value = _get(split, name)
  if value is None:
    return None
  lengths = np.asarray(value) if isinstance(value, (list, np.ndarray)) else None
  if lengths is None or lengths.dtype.kind not in 'iu' or lengths.shape != (n,):
    raise DataError(f'{name}{where} must be {n} integer step counts, not '
                    f'{getattr(lengths, "shape", type(value).__name__)}')
  if lengths.min(initial=0) < 0 or lengths.max(initial=0) > steps:
    raise DataError(f'{name}{where} holds counts outside 0..{steps}, the steps stored')
  return lengths.astype(np.int64)


def _clean(features):
  nan, inf = np.isnan(features), np.isinf(features)
  replaced = Replaced(nan=int(nan.sum()), inf=int(inf.sum()))
  if replaced.total:
    features = np.where(nan | inf, np.float32(0), features)
  return features, replaced


def regression_split(audio, visual, text, label, ids, where, steps_replaced=None):
  """A checked RegressionSplit from per-utterance audio/visual vectors and text sequences;
  `steps_replaced`: the (audio, visual) values `step_means` zeroed before averaging."""
  sizes = {'audio': audio.shape[0], 'visual': visual.shape[0], 'text': text.shape[0],
           'labels': label.shape[0]}
  if len(set(sizes.values())) != 1:
    raise DataError(f'modalities{where} have different sample counts '
                    f'({", ".join(f"{k} {v}" for k, v in sizes.items())}): the file is inconsistent')
  if ids and len(ids) != label.shape[0]:
    raise DataError(f'id{where} has {len(ids)} entries for {label.shape[0]} samples')
  with np.errstate(over='ignore'):
    label = np.asarray(label, dtype=np.float32).reshape(label.shape[0], -1)
    text = np.asarray(text, dtype=np.float32)
  if not np.isfinite(label).all():
    raise DataError(f'labels{where} hold NaN or inf: the file is damaged')
  audio, audio_replaced = _clean(np.asarray(audio, dtype=np.float32))
  visual, visual_replaced = _clean(np.asarray(visual, dtype=np.float32))
  if steps_replaced:
    audio_replaced, visual_replaced = (
        Replaced(nan=a.nan + b.nan, inf=a.inf + b.inf)
        for a, b in zip((audio_replaced, visual_replaced), steps_replaced))
  return RegressionSplit(audio=audio, visual=visual, text=text, label=label, ids=tuple(ids),
                         audio_replaced=audio_replaced, visual_replaced=visual_replaced,
                         text_nonfinite=int(text.size - np.isfinite(text).sum()))


def _mult_sequences(split, where):
  return [_array(split, key, where, rank=3) for key in ('audio', 'vision', 'text')]


def mult_iemocap_raw(source):
  """The 2018 file's nested dict from a MulT IEMOCAP file, so `data.build_dataset` validates and
  cleans it exactly as it does the 2018 file: audio/visual time-averaged (`time_mean`, no lengths),
  text kept, each emotion's (N, 2) slice of the (N, 4, 2) labels as its one-hot label."""
  raw = {}
  for name in data_lib.SPLITS:
    split = _get(source.raw, name)
    where = f' (split {name} of {source.path})'
    audio, vision, text = _mult_sequences(split, where)
    labels = _array(split, 'labels', where, rank=3)
    if labels.shape[1:] != (4, 2):
      raise DataError(f'labels{where} have shape {labels.shape}: MulT IEMOCAP labels are (N, 4, 2) '
                      '(Neutral, Happy, Sad, Angry; last axis [absent, present])')
    features = {'covarep': time_mean(audio), 'facet': time_mean(vision), 'glove': text}
    for index, emotion in enumerate(MULT_EMOTION_ORDER):
      raw.setdefault(emotion, {})[name] = {**features, 'label': labels[:, index, :]}
  return raw


def load(path, emotion):
  """The three validated splits of one task from any file `read` detects: an IEMOCAP emotion
  (the 2018 pickle or npz, MulT's iemocap_data.pkl), or a regression set's target (`sentiment`,
  or POM's `traits`); a target the file does not hold is refused in one line."""
  source = _take_recent(path)
  emotion = data_lib.normalize_emotion(emotion)
  if source.is_iemocap:
    if emotion not in data_lib.EMOTIONS:
      raise DataError(f'{source.path} holds IEMOCAP emotions, not {emotion}: pass --emotion='
                      f'{"|".join(data_lib.EMOTIONS)}')
    raw = mult_iemocap_raw(source) if source.format == MULT else source.raw
    return data_lib.build_dataset(raw, emotion, source.path)
  target = default_target(source)
  if emotion != target:
    raise DataError(f'{source.path} holds {source.task} ({source.format} format), whose target '
                    f'is {target}: pass --emotion={target} or leave --emotion out')
  regression = load_regression(source)
  splits = {}
  for name, split in regression.splits.items():
    if split.text_nonfinite:
      raise DataError(f'{source.path}: text of split {name} holds {split.text_nonfinite} NaN or '
                      'inf values: the file is damaged (the 2018 IEMOCAP file is refused alike)')
    # Sentiment is column 0: CH-SIMS's unimodal T, A, V labels that follow it are not trained.
    label = split.label[:, :1] if target == 'sentiment' else split.label
    splits[name] = data_lib.Split(audio=split.audio, visual=split.visual, text=split.text,
                                  label=label, audio_replaced=split.audio_replaced,
                                  visual_replaced=split.visual_replaced)
  dims = {name: (s.audio.shape[1], s.visual.shape[1], s.text.shape[2], s.label.shape[1])
          for name, s in splits.items()}
  if len(set(dims.values())) != 1:
    raise DataError(f'{source.path}: the splits hold different sizes (audio, visual, text, '
                    f'labels) {dims}: the splits must match')
  return data_lib.Dataset(emotion=target, path=source.path, corpus=source.dataset, **splits)


def default_target(source):
  """What a run on `source` learns when --emotion is not given: neutral (the seed's default)
  for IEMOCAP, every trait for POM, the sentiment score otherwise."""
  if source.is_iemocap:
    return 'neutral'
  return 'traits' if source.dataset == 'POM' else 'sentiment'


def label_columns(source):
  """Regression targets per utterance in a non-IEMOCAP source (POM: one per trait)."""
  if source.is_iemocap:
    raise DataError(f'{source.path} holds IEMOCAP emotions, not traits: pass --emotion='
                    f'{"|".join(data_lib.EMOTIONS)}')
  split = load_regression(source).splits['train']
  return int(split.label.shape[1])


# The last source `peek` read, so the load right after it does not read the file again.
_recent = {}


def _identity(path):
  resolved = data_lib.resolve_path(path)
  try:
    stat = os.stat(resolved)
  except OSError:
    return None
  return (os.path.realpath(resolved), stat.st_mtime_ns, stat.st_size)


def peek(path):
  """`read(path)`, kept for the next `load` of the same unchanged file (a config decides its
  target and outputs from the file, then the run loads it)."""
  key = _identity(path)
  if key in _recent:
    return _recent[key]
  source = read(path)
  _recent.clear()
  if key is not None:
    _recent[key] = source
  return source


def _take_recent(path):
  source = _recent.pop(_identity(path), None) if _recent else None
  return source if source is not None else read(path)


def load_regression(source):
  """A RegressionSet from a detected non-IEMOCAP source (`read`'s result)."""
  if source.format == CSD:
    segments, notes = csd.segments(source.path, source.raw)
    return RegressionSet(source=source, notes=tuple(notes), splits={
        name: regression_split(*arrays, f' (split {name} of {source.path})')
        for name, arrays in segments.items()})
  splits, notes, padding = {}, [], {}
  for name in data_lib.SPLITS:
    split = _get(source.raw, name)
    where = f' (split {name} of {source.path})'
    if source.format == LMF2018_REGRESSION:
      audio = _array(split, 'covarep', where, rank=2)
      visual = _array(split, 'facet', where, rank=2)
      text = _array(split, 'glove', where, rank=3)
      label = _array(split, 'label', where)
      splits[name] = regression_split(audio, visual, text, label, (), where)
    elif source.format == MULT:
      audio, vision, text = _mult_sequences(split, where)
      label = _array(split, 'labels', where)
      if label.size != label.shape[0]:
        raise DataError(f'labels{where} have shape {label.shape}: MulT labels are (N, 4, 2) for '
                        'IEMOCAP or one sentiment per utterance, (N, 1, 1)')
      ids = strings(_get(split, 'id'), 'id', where) if _get(split, 'id') is not None else ()
      (audio, audio_steps), (vision, vision_steps) = step_means(audio), step_means(vision)
      splits[name] = regression_split(audio, vision, text, label, ids, where,
                                      (audio_steps, vision_steps))
    else:
      splits[name] = _mmsa_split(split, where, notes, padding)
  for name, shares in padding.items():
    notes.append(f'{name}: {"/".join(f"{100 * x:.0f}" for x in shares)}% of the stored steps are '
                 'padding (train/valid/test)')
  if source.format == MULT:
    notes.append('audio/visual: plain means over all stored steps, zero padding included (MulT '
                 'files carry no lengths)')
  return RegressionSet(source=source, splits=splits, notes=tuple(dict.fromkeys(notes)))


def _mmsa_split(split, where, notes, padding):
  audio = _array(split, 'audio', where, rank=3)
  vision = _array(split, 'vision', where, rank=3)
  text = _array(split, 'text', where, rank=3)
  bert = _array(split, 'text_bert', where, kinds='iuf', rank=3)
  label = _array(split, 'regression_labels', where)
  n = label.shape[0]
  if bert.shape[:2] != (n, 3):
    raise DataError(f'text_bert{where} has shape {bert.shape}: expected (N, 3, T): token ids, '
                    'mask and segment ids')
  ids = strings(_get(split, 'id'), 'id', where) if _get(split, 'id') is not None else ()
  if _get(split, 'raw_text') is not None:
    strings(_get(split, 'raw_text'), 'raw_text', where)
  audio_lengths = _lengths(split, 'audio_lengths', n, audio.shape[1], where)
  vision_lengths = _lengths(split, 'vision_lengths', n, vision.shape[1], where)
  if text.shape[-1] == 768:
    notes.append('text: 768-dim BERT features, not the 300-dim GloVe LMF was built on')
  if audio_lengths is None or vision_lengths is None:
    notes.append('audio/visual: no *_lengths in the file, so plain means over all stored steps '
                 '(padding included)')
  else:
    notes.append('audio/visual: means over the first *_lengths steps only (MMSA\'s own loader '
                 'averages over its padding too)')
    for name, lengths, steps in (('audio', audio_lengths, audio.shape[1]),
                                 ('vision', vision_lengths, vision.shape[1])):
      padding.setdefault(name, []).append(1 - lengths.sum() / max(lengths.size * steps, 1))
  extra = [_array(split, f'regression_labels_{m}', where).reshape(n, 1) for m in 'TAV'
           if _get(split, f'regression_labels_{m}') is not None]
  if extra:
    notes.append('labels: column 0 the multimodal label, then the unimodal T, A, V labels')
    label = np.concatenate([label.reshape(n, 1)] + extra, axis=1)
  (audio, audio_steps), (vision, vision_steps) = (step_means(audio, audio_lengths),
                                                  step_means(vision, vision_lengths))
  return regression_split(audio, vision, text, label, ids, where, (audio_steps, vision_steps))


def checksum_note(source):
  """For a file named as one of MMSA's releases: whether its SHA-256 is the published one."""
  expected = MMSA_SHA256.get((source.dataset, os.path.basename(source.path)))
  if expected is None or os.path.isdir(source.path):
    return None
  digest = hashlib.sha256()
  with open(source.path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  if digest.hexdigest() == expected:
    return 'sha256 matches the sum quoted for MMSA\'s release'
  return (f'sha256 {digest.hexdigest()[:16]}... differs from the sum quoted for MMSA\'s release '
          f'({expected[:16]}...): a modified or synthetic copy, another release, or a quoted sum '
          'that is out of date')


def split_size_note(dataset, sizes):
  """A note when split sizes differ from the paper's, e.g. the new SDK's MOSI 1283/214/686."""
  paper = PAPER_SPLITS.get(dataset)
  if paper is None or tuple(sizes) == paper:
    return None
  return (f'split sizes {"/".join(map(str, sizes))} differ from the paper\'s '
          f'{"/".join(map(str, paper))} for {dataset}: results are not comparable to published ones')
