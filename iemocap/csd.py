"""CMU-MultimodalSDK computational sequences (`.csd`), read with h5py alone.

A `.csd` is HDF5: one root group named after the sequence, holding `data/<video id>/features`
(T, D) and `data/<video id>/intervals` (T, 2) in seconds, and `metadata/<key>`, each a (1,)
string dataset holding JSON. One file holds one modality, so a set is passed as a directory
holding them, or as a comma-separated list of files. Roles come from the file or root name:
`label` names the labels, `covarep|opensmile|audio` audio, `facet|openface|visual` visual,
`glove|word|text|bert` text; exactly one of each. The labels' rows are utterance segments; each
segment's audio/visual vector is the mean of the frames whose intervals overlap it, its text the
word vectors overlapping it (at most TEXT_STEPS, zero-padded in front as the processed GloVe
sequences are). Splits come from `folds.json` beside the files ({"train": [video ids], ...}):
the standard folds ship in the SDK's code, not in the .csd files.
"""

import json
import os

import numpy as np

from iemocap.data import DataError, SPLITS

ROLES = {'labels': ('label',), 'audio': ('covarep', 'opensmile', 'audio'),
         'visual': ('facet', 'openface', 'visual'), 'text': ('glove', 'word', 'text', 'bert')}
TEXT_STEPS = 50
FOLDS_NAME = 'folds.json'
INSTALL = 'pip install -e .[data]  (h5py)'


def _h5py():
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f'reading .csd files needs h5py: {INSTALL}') from None
  return h5py


def _paths(path):
  if os.path.isdir(path):
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith('.csd'))
  return path.split(',')


def role_paths(path):
  """{role: file} for a directory or a comma-separated list; one line if a role is missing or
  matched twice."""
  found = {}
  for file in _paths(path):
    name = os.path.basename(file).lower()
    role = next((r for r, words in ROLES.items() if any(w in name for w in words)), None)
    if role is None:
      raise DataError(f'{file}: cannot tell its modality from the name (want one of '
                      f'{", ".join(w for words in ROLES.values() for w in words)} in it)')
    if role in found:
      raise DataError(f'{file} and {found[role]} both look like {role}: pass one file per role')
    found[role] = file
  missing = [r for r in ROLES if r not in found]
  if missing:
    raise DataError(f'{path}: no .csd file for {", ".join(missing)} (audio, visual, text and '
                    'labels are needed)')
  return found


def dataset_name(path):
  joined = ' '.join(os.path.basename(p).lower() for p in _paths(path))
  for key, value in (('mosei', 'CMU-MOSEI'), ('mosi', 'CMU-MOSI'), ('pom', 'POM'),
                     ('iemocap', 'IEMOCAP')):
    if key in joined:
      return value
  return 'unknown'


def read(path):
  """(root name, {video id: (features, intervals)}, metadata dict) of one .csd file."""
  h5py = _h5py()
  try:
    with h5py.File(path, 'r') as handle:
      roots = list(handle.keys())
      if len(roots) != 1:
        raise DataError(f'{path} has {len(roots)} root groups: a computational sequence has one')
      root = handle[roots[0]]
      if 'data' not in root or 'metadata' not in root:
        raise DataError(f'{path}: root {roots[0]} lacks data or metadata: not a computational '
                        'sequence')
      metadata = {}
      for key, item in root['metadata'].items():
        value = item[0] if isinstance(item, h5py.Dataset) and item.shape == (1,) else None
        value = value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)
        try:
          metadata[key] = json.loads(value)
        except ValueError:
          metadata[key] = value
      videos = {}
      for vid, group in root['data'].items():
        if not isinstance(group, h5py.Group) or 'features' not in group or 'intervals' not in group:
          raise DataError(f'{path}: data/{vid} lacks features or intervals')
        features, intervals = group['features'][()], group['intervals'][()]
        if (features.ndim != 2 or features.dtype.kind not in 'fiu' or intervals.shape !=
            (features.shape[0], 2) or intervals.dtype.kind not in 'fiu'):
          raise DataError(f'{path}: data/{vid} has features {features.shape} {features.dtype} and '
                          f'intervals {intervals.shape}: expected (T, D) numbers and (T, 2) times')
        videos[vid] = (features, intervals.astype(np.float64))
      return roots[0], videos, metadata
  except DataError:
    raise
  except (OSError, KeyError, ValueError, TypeError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f'{path} is not a readable HDF5 computational sequence ({reason}): download '
                    'it again') from None


def _overlapping(intervals, start, end):
  return (intervals[:, 0] < end) & (intervals[:, 1] > start)


def segments(path, role_paths):
  """({split: (audio, visual, text, label, ids)}, notes) of a .csd set (`role_paths`: its
  files by role): one row per labelled segment, split by folds.json beside the files."""
  tables = {role: read(file) for role, file in role_paths.items()}
  labels = tables['labels'][1]
  folds = _folds(path, labels)
  rows = {name: {'audio': [], 'visual': [], 'text': [], 'label': [], 'ids': []} for name in folds}
  empty = 0
  text_dim = next(iter(tables['text'][1].values()))[0].shape[1] if tables['text'][1] else 0
  for name, videos in folds.items():
    for vid in videos:
      for k, (label, (start, end)) in enumerate(zip(*labels[vid])):
        row = rows[name]
        for role in ('audio', 'visual'):
          features, intervals = tables[role][1].get(vid, (np.zeros((0, 1)), np.zeros((0, 2))))
          hit = features[_overlapping(intervals, start, end)]
          empty += hit.shape[0] == 0
          row[role].append(hit.mean(axis=0) if hit.shape[0] else None)
        words, intervals = tables['text'][1].get(vid, (np.zeros((0, text_dim)), np.zeros((0, 2))))
        words = words[_overlapping(intervals, start, end)][-TEXT_STEPS:]
        text = np.zeros((TEXT_STEPS, text_dim), np.float32)
        text[TEXT_STEPS - words.shape[0]:] = words
        row['text'].append(text)
        row['label'].append(np.asarray(label, np.float32).reshape(-1))
        row['ids'].append(f'{vid}[{k}]')
  splits = {}
  for name, row in rows.items():
    if not row['label']:
      raise DataError(f'{path}: split {name} has no labelled segments (check {FOLDS_NAME})')
    stacked = {}
    for role in ('audio', 'visual'):
      dim = next((v.shape[0] for v in row[role] if v is not None), 1)
      stacked[role] = np.stack([v if v is not None else np.zeros(dim) for v in row[role]])
    splits[name] = (stacked['audio'], stacked['visual'], np.stack(row['text']),
                    np.stack(row['label']), row['ids'])
  notes = [f'audio/visual: means of the frames overlapping each labelled segment; text: the '
           f'word vectors overlapping it, at most {TEXT_STEPS}, zero-padded in front']
  if empty:
    notes.append(f'{empty} segment-modality pairs had no overlapping frames (zero vectors)')
  if list(folds) == ['all']:
    notes.append(f'no {FOLDS_NAME}: one split "all"; the standard folds are in the SDK '
                 '(mmdatasdk.<set>.standard_folds)')
  return splits, notes


def _folds(path, labels):
  """{split: [video ids]} from folds.json beside the files, else {'all': every labelled video}."""
  directory = path if os.path.isdir(path) else os.path.dirname(path.split(',')[0])
  file = os.path.join(directory, FOLDS_NAME)
  if not os.path.isfile(file):
    return {'all': sorted(labels)}
  try:
    with open(file, encoding='utf-8') as f:
      folds = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{file} is unreadable ({e}): write {{"train": [...], "valid": [...], '
                    '"test": [...]}} video ids') from None
  if not isinstance(folds, dict) or sorted(folds) != sorted(SPLITS) or not all(
      isinstance(v, list) and all(isinstance(x, str) for x in v) for v in folds.values()):
    raise DataError(f'{file} must map train, valid and test to lists of video ids')
  unknown = sorted({v for ids in folds.values() for v in ids} - set(labels))
  if unknown:
    raise DataError(f'{file} names {len(unknown)} video ids with no labels, e.g. {unknown[0]}')
  return {name: folds[name] for name in SPLITS}
