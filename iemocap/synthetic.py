"""A synthetic IEMOCAP stand-in in the exact format of the 2018 `iemocap.pkl`.

The real features are licensed, so the project's runnable default is this set.
How it is built (see README.md for what its F1 means):

* Each utterance has one hidden number per modality per latent dimension,
  z_audio, z_visual, z_text (standard normal). Features are noisy views of
  them: COVAREP-like audio (74 dims) and FACET-like visual (35 dims) are linear
  mixtures plus noise with per-dimension scales spanning decades and large
  offsets (so the input BatchNorm matters), sprinkled with NaN and +-inf;
  GloVe-like text is 20 zero-padded steps of word vectors from a
  Zipf-distributed vocabulary, each word nudged along a direction set by z_text
  (the LSTM has to pool the sequence).
* Each emotion e projects the hidden values on its own directions (s_a, s_v,
  s_t) and scores them with SCORE_WEIGHTS: unimodal terms (text strongest, as
  in IEMOCAP), an audio x text and an audio x visual x text interaction that
  only a fusion model can use, plus noise; the top POSITIVE_RATES[e] share of
  scores is positive. The noise keeps the best achievable F1 well below 100.
* Features are shared by the four emotion tasks; only the labels differ, each
  task binary with one-hot labels, like the real file. Unlike the real 4-class
  subset, an utterance may be positive for several emotions or none.

Trained with the presets, LMF lands well above the majority baseline and well
above any single modality (WORKSPACE.md has the figures).
"""

import os

import numpy as np

from iemocap import data as data_lib
from iemocap import files
from iemocap import pickle_io

# Bump whenever the bytes for a given seed and sizes change, for any set the loader accepts
# (sets it refuses, with a one-class split, may change: see _emotion_labels).
VERSION = 1
DEFAULT_SIZES = (2717, 798, 938)  # the released CMU split
DEFAULT_SEED = 0
POSITIVE_RATES = {'happy': 0.15, 'sad': 0.22, 'angry': 0.25, 'neutral': 0.38}
SEQ_LEN = 20
LATENT_DIM = 1
VOCAB = 4000
# Weights of each emotion's score: unimodal terms (text strongest, as in IEMOCAP),
# an audio-text and a trimodal interaction that only fusion can use, and noise.
SCORE_WEIGHTS = {'text': 0.7, 'audio': 0.5, 'visual': 0.4, 'audio*text': 0.5,
                 'audio*visual*text': 0.8}
LABEL_NOISE = 0.6
TEXT_SIGNAL = 0.22
NAN_RATE = 4e-4
MARKER_SUFFIX = '.synthetic.json'
GENERATOR = 'iemocap.synthetic'
# A marker record's fields and types; bool is refused where int is asked (JSON true is no seed).
MARKER_FIELDS = {'generator': str, 'version': int, 'seed': int, 'sizes': list, 'bytes': int}
INF_RATE = 1e-4


def _mixed_view(rng, z, dim, noise):
  """A linear view of z with per-dimension scales spanning decades and offsets."""
  mixing = rng.normal(size=(z.shape[1], dim)) / np.sqrt(z.shape[1])
  clean = z @ mixing + noise * rng.normal(size=(z.shape[0], dim))
  scale = np.exp(rng.normal(0.0, 1.5, size=dim))
  offset = rng.normal(0.0, 2.0, size=dim) * scale
  return (clean * scale + offset).astype(np.float32)


def _sprinkle_nonfinite(rng, features, nan_rate, inf_rate):
  flat = features.reshape(-1)
  for rate, value in ((nan_rate, np.nan), (inf_rate, np.inf), (inf_rate, -np.inf)):
    count = rng.binomial(flat.size, rate)
    flat[rng.choice(flat.size, size=count, replace=False)] = value


def _text(rng, z_text, n):
  # Zipf-like word frequencies over a GloVe-scaled vocabulary.
  vocab = rng.normal(0.0, 0.4, size=(VOCAB, data_lib.TEXT_DIM)).astype(np.float32)
  freq = 1.0 / np.arange(1, VOCAB + 1)
  words = rng.choice(VOCAB, size=(n, SEQ_LEN), p=freq / freq.sum())
  direction = rng.normal(size=(LATENT_DIM, data_lib.TEXT_DIM)) / np.sqrt(LATENT_DIM)
  direction *= TEXT_SIGNAL
  text = vocab[words] + (z_text @ direction).astype(np.float32)[:, None, :]
  lengths = np.clip(np.round(rng.gamma(4.0, 3.0, size=n)).astype(int), 3, SEQ_LEN)
  pad = np.arange(SEQ_LEN)[None, :] < (SEQ_LEN - lengths)[:, None]
  text[pad] = 0.0  # zero padding in front, as the processed GloVe sequences have
  return text.astype(np.float32)


def _emotion_labels(rng, z, n, bounds):
  """{emotion: 0/1 per utterance}: a trimodal score per emotion, thresholded at its rate.

  The loader refuses a split with one class, which small sets can draw (happy's 15% of 4
  samples); there the best-scored negative (or worst-scored positive) changes class. It draws
  no random numbers, so a set whose splits all hold both classes keeps its bytes.
  """
  labels = {}
  for emotion, rate in POSITIVE_RATES.items():
    projections = []
    for z_m in z:
      u = rng.normal(size=LATENT_DIM)
      projections.append(z_m @ (u / np.linalg.norm(u)))
    s_a, s_v, s_t = projections
    w = SCORE_WEIGHTS
    score = (w['text'] * s_t + w['audio'] * s_a + w['visual'] * s_v + w['audio*text'] * s_a * s_t
             + w['audio*visual*text'] * s_a * s_v * s_t + LABEL_NOISE * rng.normal(size=n))
    labels[emotion] = (score > np.quantile(score, 1.0 - rate)).astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:]):
      part = labels[emotion][start:stop]
      if part.min() == part.max():
        pick = np.argmax(score[start:stop]) if part[0] == 0 else np.argmin(score[start:stop])
        part[pick] = 1 - part[0]
  return labels


def generate(seed=DEFAULT_SEED, sizes=DEFAULT_SIZES):
  """The nested dict of the 2018 file: data[emotion][split][modality] (str keys, as Python 2 had)."""
  if len(sizes) != 3 or min(sizes) < 2:
    raise data_lib.DataError(f'synthetic sizes {tuple(sizes)} need three splits of 2 or more samples')
  rng = np.random.default_rng(seed)
  n = int(sum(sizes))
  z = [rng.normal(size=(n, LATENT_DIM)) for _ in range(3)]
  audio = _mixed_view(rng, z[0], data_lib.AUDIO_DIM, noise=0.6)
  visual = _mixed_view(rng, z[1], data_lib.VISUAL_DIM, noise=0.6)
  _sprinkle_nonfinite(rng, audio, NAN_RATE, INF_RATE)
  _sprinkle_nonfinite(rng, visual, NAN_RATE / 4, 0.0)
  text = _text(rng, z[2], n)
  bounds = np.cumsum((0,) + tuple(sizes))
  labels = _emotion_labels(rng, z, n, bounds)
  raw = {}
  features = {}
  for index, split in enumerate(data_lib.SPLITS):
    part = slice(bounds[index], bounds[index + 1])
    # The same arrays for every emotion, as in the real file.
    features[split] = {'covarep': audio[part], 'facet': visual[part], 'glove': text[part]}
  for emotion in data_lib.EMOTIONS:
    raw[emotion] = {}
    for index, split in enumerate(data_lib.SPLITS):
      part = slice(bounds[index], bounds[index + 1])
      one_hot = np.eye(2, dtype=np.float32)[labels[emotion][part]]
      raw[emotion][split] = {**features[split], 'label': one_hot}
  return raw


def write(out_dir, seed=DEFAULT_SEED, sizes=DEFAULT_SIZES, overwrite=False):
  """Writes `out_dir/iemocap.pkl` in the Python-2 format of the real file; returns its path.

  A sidecar `iemocap.pkl.synthetic.json` (seed, sizes, the file's size) marks it, so results
  made from it say synthetic. An existing iemocap.pkl is kept unless `overwrite`: it may be
  the licensed real file.
  """
  path = os.path.join(os.fspath(out_dir), data_lib.PICKLE_NAME)
  if os.path.exists(path) and not overwrite:
    raise data_lib.DataError(f'{path} exists (the real data, perhaps): choose another --out, '
                             'or pass --overwrite to replace it')
  blob = pickle_io.py2_dumps(generate(seed, sizes))
  try:
    files.atomic_write(path, lambda f: f.write(blob))
    mark(path, {'generator': GENERATOR, 'version': VERSION, 'seed': seed, 'sizes': list(sizes)})
  except OSError as e:
    raise data_lib.write_error(path, e, 'choose a writable directory (--out, or $LMF_CACHE_DIR '
                               'for the default set)') from None
  return path


def _marker(data_file):
  return os.path.abspath(os.fspath(data_file)) + MARKER_SUFFIX


def mark(data_file, record):
  """Marks `data_file` as synthetic; the marker holds its size, so a file put in its place later
  is not mistaken for it."""
  files.write_json(_marker(data_file), {**record, 'bytes': os.path.getsize(data_file)})


def unmark(data_file):
  """Removes a marker left beside `data_file` by an earlier synthetic file of that name."""
  if os.path.lexists(_marker(data_file)):
    os.unlink(_marker(data_file))


def describe(data_file):
  """The synthetic set's marker record, or None for any other file (real data).

  A marker that exists but is damaged (not JSON, wrong fields or types) is a DataError, not
  "real data": the marker is what keeps a synthetic F1 from being reported as the paper's, so
  a damaged one is not guessed at either way. The message says how to settle it.
  """
  marker = _marker(data_file)
  if not os.path.lexists(marker):
    return None
  fix = (f'delete it if {os.fspath(data_file)} is real data, or write the synthetic set again '
         'with `python -m iemocap synth --overwrite`')
  try:
    record = files.read_json(marker)
  except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
    reason = (e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]) or type(e).__name__
    raise data_lib.DataError(f'synthetic-data marker {marker} is unreadable ({reason}): '
                             f'{fix}') from None
  if not isinstance(record, dict) or record.get('generator') != GENERATOR or any(
      not isinstance(record.get(k), t) or isinstance(record.get(k), bool)
      for k, t in MARKER_FIELDS.items()):
    expected = ', '.join(f'{k} ({t.__name__})' for k, t in MARKER_FIELDS.items())
    raise data_lib.DataError(f'synthetic-data marker {marker} is not a marker record (expected '
                             f'fields {expected}): {fix}')
  return record if record['bytes'] == os.path.getsize(data_file) else None


def cache_dir():
  """Where the default synthetic set lives: $LMF_CACHE_DIR, else $XDG_CACHE_HOME/lmf-iemocap."""
  if os.environ.get('LMF_CACHE_DIR'):
    return os.environ['LMF_CACHE_DIR']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'lmf-iemocap')


def default_path(seed=DEFAULT_SEED):
  """The cached default synthetic file, generated on first use or if its marker is missing or
  damaged."""
  directory = os.path.join(cache_dir(), f'synthetic-v{VERSION}-seed{seed}')
  path = os.path.join(directory, data_lib.PICKLE_NAME)
  try:
    current = os.path.exists(path) and describe(path) is not None
  except data_lib.DataError:
    current = False  # the cache is ours: a damaged marker means generate again
  if not current:
    write(directory, seed, overwrite=True)
  return path
