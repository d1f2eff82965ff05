"""Flags of the `predict` commands of both backends (lmf_torch_npu's adds --device).

Importing this module defines no flag; the command lines call define_flags once.
"""

from absl import flags

from flags import evaluation
from iemocap.data import EMOTIONS
from iemocap.data import SPLITS


def define_flags():
  evaluation.define_checkpoint_flag()
  flags.DEFINE_string('features', '', 'A features .npz holding covarep (N, 74), facet (N, 35), '
                      'glove (N, T, 300) and optionally id (N,); or a data file the loader '
                      'reads (iemocap.pkl / .npz, or its directory), of which --split is taken.')
  flags.DEFINE_enum('split', 'test', SPLITS, 'The split of a data file given as --features.')
  flags.DEFINE_string('emotion', '', f'{"|".join(EMOTIONS)}: needed for a bare two-class 2018 '
                      'state_dict, which does not record it; empty: the checkpoint\'s own (a bare '
                      'one-output state_dict is sentiment, more outputs traits).')
  flags.DEFINE_string('out', '', 'The predictions: .csv or .jsonl (by extension), one row per '
                      'utterance: id (or index), prob_<class> per class and prediction; a '
                      'regression model\'s value (value_<trait>) and, for sentiment, its sign.')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing --out (atomically).')
  flags.DEFINE_integer('batch_size', 512, 'Utterances per forward pass.')
