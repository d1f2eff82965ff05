"""Utterances to predict on: a features `.npz`, or one split of a data file the loader reads.

A features file holds per-utterance arrays under the 2018 names, `covarep` (N, 74),
`facet` (N, 35), `glove` (N, T, 300), and optionally `id` (N,) of strings or
integers. Either way the features are cleaned exactly as for training
(`data.clean_features`) and checked against the model's input sizes, so a
mismatch is one line naming the array, before any prediction.
"""

import dataclasses
import os

import numpy as np

from iemocap import data
from iemocap import formats
from iemocap.errors import DataError

FEATURE_NAMES = ('covarep', 'facet', 'glove')  # audio, visual, text: the model's input order
ID_NAME = 'id'
_FIX = ('write it with numpy.savez(path, covarep=..., facet=..., glove=..., id=...) from '
        'numeric arrays (and strings or integers for id)')


@dataclasses.dataclass(frozen=True)
class Features:
  """Cleaned float32 features of N utterances, their ids when the file has them."""
  audio: np.ndarray  # (N, audio features)
  visual: np.ndarray  # (N, visual features)
  text: np.ndarray  # (N, T, text features)
  ids: tuple | None  # N strings, or None: rows are named by their index
  source: str  # the file, and the split for a data file
  audio_replaced: data.Replaced = data.Replaced()
  visual_replaced: data.Replaced = data.Replaced()

  @property
  def n(self):
    return int(self.audio.shape[0])

  def replaced_text(self):
    return f'replaced {self.audio_replaced} in covarep, {self.visual_replaced} in facet'


def _checked(array, name, tail, path):
  """A feature array of shape (N, *tail), as the model of `tail`'s sizes takes it."""
  expected = f'(N, {", ".join("T" if d is None else str(d) for d in tail)})'
  shape = getattr(array, 'shape', None)
  if shape is not None and (len(shape) != 1 + len(tail) or any(
      want is not None and have != want for have, want in zip(shape[1:], tail))):
    raise DataError(f'{name} in {path} has shape {tuple(shape)}, but the checkpoint\'s model '
                    f'takes {expected}: pass features of the dimensions it was trained on')
  return data.feature_array(array, name, tail, f' in {path}')


def _ids(array, n, path):
  """The `id` array as N strings."""
  if array.ndim != 1 or array.shape[0] != n:
    raise DataError(f'{ID_NAME} in {path} has shape {array.shape}: expected ({n},), one id per '
                    'utterance')
  if array.dtype.kind == 'S':
    return tuple(value.decode('utf-8', 'replace') for value in array)
  if array.dtype.kind in 'Uiu':
    return tuple(str(value) for value in array)
  raise DataError(f'{ID_NAME} in {path} has dtype {array.dtype}: ids are strings or integers')


def from_arrays(arrays, input_dims, path):
  """Features from {'covarep', 'facet', 'glove'[, 'id']} arrays, checked and cleaned."""
  unknown = sorted(set(arrays) - set(FEATURE_NAMES) - {ID_NAME})
  if unknown:
    raise DataError(f'{path} holds {", ".join(unknown)}: a features file holds '
                    f'{", ".join(FEATURE_NAMES)} and optionally {ID_NAME}')
  missing = [name for name in FEATURE_NAMES if name not in arrays]
  if missing:
    raise DataError(f'{path} has no {missing[0]} array: a features file holds covarep (N, '
                    f'{input_dims[0]}), facet (N, {input_dims[1]}), glove (N, T, {input_dims[2]}) '
                    f'and optionally {ID_NAME} (N,)')
  audio_in, visual_in, text_in = input_dims
  audio = _checked(arrays['covarep'], 'covarep (audio)', (audio_in,), path)
  visual = _checked(arrays['facet'], 'facet (visual)', (visual_in,), path)
  text = _checked(arrays['glove'], 'glove (text)', (None, text_in), path)
  counts = {'covarep': audio.shape[0], 'facet': visual.shape[0], 'glove': text.shape[0]}
  if len(set(counts.values())) != 1:
    raise DataError(f'{path}: the arrays hold different numbers of utterances '
                    f'({", ".join(f"{k} {v}" for k, v in counts.items())}): one row per utterance '
                    'in each')
  if audio.shape[0] == 0:
    raise DataError(f'{path} holds no utterances: nothing to predict')
  if text.shape[1] == 0:
    raise DataError(f'glove (text) in {path} has 0 time steps: every utterance needs at least '
                    'one word vector')
  ids = _ids(arrays[ID_NAME], audio.shape[0], path) if ID_NAME in arrays else None
  audio, visual, audio_replaced, visual_replaced = data.clean_features(audio, visual, text,
                                                                       f' in {path}')
  return Features(audio=audio, visual=visual, text=text, ids=ids, source=path,
                  audio_replaced=audio_replaced, visual_replaced=visual_replaced)


def _from_split(dataset, split, input_dims):
  """A data file's split as Features; its sizes are the loader's, checked against the model's."""
  chosen = dataset.split(split)
  if dataset.input_dims != tuple(input_dims):
    raise DataError(f'{dataset.path} holds features of sizes {dataset.input_dims} (covarep, '
                    f'facet, glove), but the checkpoint\'s model takes {tuple(input_dims)}: '
                    'pass data of the dimensions it was trained on')
  return Features(audio=chosen.audio, visual=chosen.visual, text=chosen.text, ids=None,
                  source=f'{dataset.path} ({dataset.emotion}/{split})',
                  audio_replaced=chosen.audio_replaced, visual_replaced=chosen.visual_replaced)


def read(path, input_dims, emotion, split='test'):
  """Features of a features `.npz`, or of `split` of `emotion` in a data file (pickle or npz).

  An npz whose member names hold a `/` is a data file (`python -m iemocap convert` writes
  those); any other npz is a features file. Nothing is unpickled from an npz.
  """
  if not os.path.exists(path):
    raise DataError(f'features file {path} does not exist: pass a features .npz, or a data file '
                    'and --split')
  path = data.resolve_path(path)
  if not path.endswith('.npz'):
    return _from_split(formats.load(path, emotion), split, input_dims)
  arrays = data.read_npz_arrays(path, fix=_FIX)
  if any('/' in name for name in arrays):
    raw = data.nest_npz_arrays(arrays, path)
    return _from_split(data.build_dataset(raw, emotion, path), split, input_dims)
  return from_arrays(arrays, input_dims, os.fspath(path))
