"""Synthetic stand-ins for the MulT, MMSA and CMU-SDK files (`synth --format=...`).

Same keys, dtypes and layouts as the released files (WORKSPACE.md says which were checked
against the projects' loaders), small by default, with a planted signal: the hidden-variable
approach of `synthetic.py`. `mult-iemocap` is built from `synthetic.generate`'s 2018 set itself:
each utterance's audio/visual vector v becomes a 20-step sequence that is zero where its text is
padding and v * 20 / (real steps) plus step noise summing to zero elsewhere, so its plain time
mean gives back v (up to rounding) and the labels are the 2018 set's. The regression sets score
a sentiment from hidden audio, visual and text values (text strongest, an audio x text term).
"""

import json
import os
import pickle

import numpy as np

from iemocap import data as data_lib
from iemocap import files
from iemocap import synthetic

FORMATS = ('mult-iemocap', 'mult-mosi', 'mmsa-mosi', 'mmsa-sims', 'csd-mosi', 'lmf2018-mosi',
           'lmf2018-pom')
DEFAULT_SIZES = (48, 16, 24)
# Where each stand-in is written under --out, by its release's name.
FILE_NAMES = {'mult-iemocap': 'iemocap_data.pkl', 'mult-mosi': 'mosi_data.pkl',
              'mmsa-mosi': 'unaligned_50.pkl', 'mmsa-sims': 'unaligned_39.pkl',
              'csd-mosi': 'csd-mosi', 'lmf2018-mosi': 'mosi.pkl', 'lmf2018-pom': 'pom.pkl'}
# The runnable default of each regression target (no --data_path): the 2018 layout at the
# sizes of the splits the 2018 code used (MOSI as in the LMF paper; POM as in MFN's).
DEFAULT_REGRESSION = {'sentiment': ('lmf2018-mosi', (1284, 229, 686)),
                      'traits': ('lmf2018-pom', (600, 100, 203))}
POM_TRAITS = 16
CSD_FILES = {'audio': ('CMU_MOSI_COVAREP', 74), 'visual': ('CMU_MOSI_Visual_Facet_41', 47),
             'text': ('CMU_MOSI_TimestampedWordVectors', 300),
             'labels': ('CMU_MOSI_Opinion_Labels', 1)}


def _pickle(obj):
  return pickle.dumps(obj, protocol=4)  # MulT and MMSA wrote Python-3 pickles


def mult_iemocap(seed, sizes):
  """MulT's aligned iemocap_data.pkl from the 2018 synthetic set of the same seed and sizes."""
  raw = synthetic.generate(seed, sizes)
  rng = np.random.default_rng(seed + 1)
  out = {}
  for split in data_lib.SPLITS:
    shared = raw['happy'][split]
    text = shared['glove']
    real = np.abs(text).sum(axis=2) > 0  # (N, 20): steps holding a word
    steps = real.sum(axis=1, keepdims=True)
    sequences = {}
    for key, name in (('covarep', 'audio'), ('facet', 'vision')):
      vectors = shared[key].astype(np.float64)
      noise = rng.normal(0.0, 0.1, size=real.shape + vectors.shape[1:]) * real[:, :, None]
      noise -= noise.sum(axis=1, keepdims=True) / steps[:, :, None] * real[:, :, None]
      with np.errstate(invalid='ignore'):
        scaled = vectors[:, None, :] * (real.shape[1] / steps)[:, :, None]
        sequences[name] = np.where(real[:, :, None], scaled + noise, 0).astype(np.float32)
    labels = np.stack([raw[e][split]['label'] for e in ('neutral', 'happy', 'sad', 'angry')], 1)
    out[split] = {'vision': sequences['vision'], 'audio': sequences['audio'], 'text': text,
                  'labels': labels.astype(np.float32)}
  return out


def _hidden(rng, n):
  z = rng.normal(size=(3, n))
  score = 0.5 * z[0] + 0.4 * z[1] + 0.9 * z[2] + 0.4 * z[0] * z[2] + 0.3 * rng.normal(size=n)
  return z, score


class _Directions:
  """One random direction per modality, drawn on first use and shared by every split, so the
  planted signal learnt on train is the one valid and test hold."""

  def __init__(self, rng):
    self.rng, self.drawn = rng, {}

  def __call__(self, modality, dim):
    if modality not in self.drawn:
      self.drawn[modality] = self.rng.normal(size=dim)
    return self.drawn[modality]


def _sequences(rng, z, n, steps, dim, direction, lengths=None, scale=1.0):
  base = rng.normal(0.0, 0.5, size=(n, steps, dim)) + z[:, None, None] * direction * scale
  if lengths is not None:
    base[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0  # padded at the end
  return base.astype(np.float32)


def mult_mosi(seed, sizes):
  """mosi_data.pkl: text (N,50,300), audio (N,50,5), vision (N,50,20), labels (N,1,1) in
  [-3, 3], id (N, 3) bytes (video, start, end) as MulT's loader decodes them."""
  rng = np.random.default_rng(seed)
  directions = _Directions(rng)
  out = {}
  for split, n in zip(data_lib.SPLITS, sizes):
    z, score = _hidden(rng, n)
    audio = _sequences(rng, z[0], n, 50, 5, directions('audio', 5))
    audio[rng.random(audio.shape) < 1e-3] = -np.inf  # MulT's audio holds -inf
    out[split] = {
        'text': _sequences(rng, z[2], n, 50, 300, directions('text', 300), scale=0.2),
        'audio': audio,
        'vision': _sequences(rng, z[1], n, 50, 20, directions('vision', 20)),
        'labels': np.clip(score * 1.5, -3, 3).astype(np.float32).reshape(n, 1, 1),
        'id': np.array([[f'vid{split}{i // 4}'.encode(), f'{i % 4}'.encode(), b'0']
                        for i in range(n)], dtype=object)}
  return out


def mmsa(seed, sizes, sims=False):
  """MMSA's unaligned_50.pkl (MOSI: audio (N,375,5), vision (N,500,20)) or unaligned_39.pkl
  (SIMS: audio (N,400,33), vision (N,55,709), unimodal labels), BERT text (N,T,768)."""
  rng = np.random.default_rng(seed)
  steps, audio_shape, vision_shape = ((39, (400, 33), (55, 709)) if sims
                                      else (50, (375, 5), (500, 20)))
  directions = _Directions(rng)
  out = {}
  for split, n in zip(data_lib.SPLITS, sizes):
    z, score = _hidden(rng, n)
    audio_lengths = rng.integers(audio_shape[0] // 4, audio_shape[0] + 1, size=n)
    vision_lengths = rng.integers(vision_shape[0] // 4, vision_shape[0] + 1, size=n)
    label = np.tanh(score / 2) if sims else np.clip(score * 1.5, -3, 3)
    mask = (np.arange(steps)[None, :] < rng.integers(5, steps + 1, size=(n, 1))).astype(np.int64)
    record = {
        'raw_text': np.array([f'utterance {i}' for i in range(n)], dtype=object),
        'audio': _sequences(rng, z[0], n, *audio_shape, directions('audio', audio_shape[1]),
                            lengths=audio_lengths),
        'vision': _sequences(rng, z[1], n, *vision_shape, directions('vision', vision_shape[1]),
                             lengths=vision_lengths),
        'id': np.array([f'video{i // 4}$_${i % 4}' for i in range(n)], dtype=object),
        'text': _sequences(rng, z[2], n, steps, 768, directions('text', 768), scale=0.3),
        'text_bert': np.stack([rng.integers(1000, 30000, size=(n, steps)) * mask, mask,
                               np.zeros((n, steps), np.int64)], axis=1),
        'audio_lengths': [int(x) for x in audio_lengths],
        'vision_lengths': [int(x) for x in vision_lengths],
        'annotations': np.array(['Positive' if s > 0 else 'Negative' for s in label], dtype=object),
        'regression_labels': label.astype(np.float32)}
    if sims:
      for m, index in zip('TAV', (2, 0, 1)):
        record[f'regression_labels_{m}'] = np.tanh(z[index] / 2).astype(np.float32)
    out[split] = record
  return out


def lmf2018(seed, sizes, pom=False):
  """The 2018 code's mosi.pkl / pom.pkl: data[split] with covarep (N,74) (POM: 43), facet
  (N,47) (POM: 43), glove (N,20,300) and label: a [-3, 3] sentiment (N,1), or POM's 16 traits
  on its 1-7 scale (N,16); a few NaN and -inf in covarep, as the released files hold."""
  rng = np.random.default_rng(seed)
  audio_dim, visual_dim = (43, 43) if pom else (74, 47)
  directions = _Directions(rng)
  trait_weights = rng.normal(size=(4, POM_TRAITS))
  out = {}
  for split, n in zip(data_lib.SPLITS, sizes):
    z, score = _hidden(rng, n)
    audio = z[0][:, None] * directions('audio', audio_dim) + rng.normal(0, 0.5, (n, audio_dim))
    audio[rng.random(audio.shape) < 1e-3] = np.nan
    audio[rng.random(audio.shape) < 1e-3] = -np.inf
    visual = z[1][:, None] * directions('vision', visual_dim) + rng.normal(
        0, 0.5, (n, visual_dim))
    if pom:
      hidden = np.stack([score, z[0], z[1], z[2]], axis=1) / 2
      label = np.clip(4 + 1.5 * np.tanh(hidden @ trait_weights), 1, 7)
    else:
      label = np.clip(score * 1.5, -3, 3)[:, None]
    out[split] = {'covarep': audio.astype(np.float32), 'facet': visual.astype(np.float32),
                  'glove': _sequences(rng, z[2], n, 20, 300, directions('text', 300), scale=0.2),
                  'label': label.astype(np.float32)}
  return out


def _write_csd(path, root, videos):
  import h5py  # pylint: disable=import-outside-toplevel  (the caller checked it is there)
  with h5py.File(path, 'w') as handle:
    group = handle.create_group(root)
    data = group.create_group('data')
    for vid, (features, intervals) in videos.items():
      entry = data.create_group(vid)
      entry.create_dataset('features', data=features)
      entry.create_dataset('intervals', data=intervals)
    metadata = group.create_group('metadata')
    for key, value in (('root name', root), ('computational sequence description', 'synthetic'),
                       ('dimension names', None), ('alignment compatible', True)):
      item = metadata.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
      item[0] = json.dumps(value)


def csd_mosi(directory, seed, sizes):
  """Four .csd files (COVAREP 74, FACET 47, GloVe 300 words, opinion labels) and folds.json."""
  from iemocap import csd  # pylint: disable=import-outside-toplevel
  csd._h5py()  # pylint: disable=protected-access  (one line if h5py is missing)
  rng = np.random.default_rng(seed)
  videos = {role: {} for role in CSD_FILES}
  folds = {}
  for split, n in zip(data_lib.SPLITS, sizes):
    z, score = _hidden(rng, n)
    folds[split] = []
    for video in range(0, n, 2):
      vid = f'{split}_video{video // 2}'
      folds[split].append(vid)
      segments = range(video, min(video + 2, n))
      for role in ('audio', 'visual', 'text'):
        dim = CSD_FILES[role][1]
        rows, times = [], []
        for k, seg in enumerate(segments):
          count = 12 if role != 'text' else 6
          start = 5.0 * k + np.sort(rng.uniform(0, 4.5, size=count))
          times.append(np.stack([start, start + 0.4], axis=1))
          hidden = z[{'audio': 0, 'visual': 1, 'text': 2}[role], seg]
          rows.append(rng.normal(0, 0.5, size=(count, dim)) + hidden)
        videos[role][vid] = (np.concatenate(rows).astype(np.float32), np.concatenate(times))
      videos['labels'][vid] = (
          np.clip(score[list(segments)] * 1.5, -3, 3).astype(np.float32)[:, None],
          np.array([[5.0 * k, 5.0 * k + 5.0] for k in range(len(segments))]))
  os.makedirs(directory, exist_ok=True)
  for role, (root, _) in CSD_FILES.items():
    _write_csd(os.path.join(directory, root + '.csd'), root, videos[role])
  files.write_json(os.path.join(directory, csd.FOLDS_NAME), folds)


def write(fmt, out_dir, seed, sizes, overwrite=False):
  """Writes the `fmt` stand-in under out_dir by its release's name; returns its path."""
  path = os.path.join(os.fspath(out_dir), FILE_NAMES[fmt])
  if os.path.exists(path) and not overwrite:
    raise data_lib.DataError(f'{path} exists (real data, perhaps): choose another --out, or pass '
                             '--overwrite to replace it')
  try:
    if fmt == 'csd-mosi':
      csd_mosi(path, seed, sizes)
      return path
    builders = {'mult-iemocap': mult_iemocap, 'mult-mosi': mult_mosi, 'mmsa-mosi': mmsa,
                'mmsa-sims': lambda s, z: mmsa(s, z, sims=True), 'lmf2018-mosi': lmf2018,
                'lmf2018-pom': lambda s, z: lmf2018(s, z, pom=True)}
    blob = _pickle(builders[fmt](seed, sizes))
    files.atomic_write(path, lambda f: f.write(blob))
    synthetic.mark(path, {'generator': synthetic.GENERATOR, 'version': synthetic.VERSION,
                          'seed': seed, 'sizes': list(sizes), 'format': fmt})
  except OSError as e:
    raise data_lib.write_error(path, e, 'choose a writable directory (--out)') from None
  return path


def default_path(target, seed=synthetic.DEFAULT_SEED):
  """The cached synthetic stand-in a regression target trains on without --data_path,
  generated on first use (or when its marker is missing or damaged)."""
  fmt, sizes = DEFAULT_REGRESSION[target]
  directory = os.path.join(synthetic.cache_dir(), f'synthetic-v{synthetic.VERSION}-seed{seed}')
  path = os.path.join(directory, FILE_NAMES[fmt])
  try:
    current = os.path.exists(path) and synthetic.describe(path) is not None
  except data_lib.DataError:
    current = False  # the cache is ours: a damaged marker means generate again
  if not current:
    os.makedirs(directory, exist_ok=True)
    write(fmt, directory, seed, sizes, overwrite=True)
  return path
