"""The framework-neutral IEMOCAP data layer (numpy only): loading, validation,
the synthetic stand-in, batching, metrics and run records."""

from iemocap.batching import epoch_batches
from iemocap.data import EMOTIONS, SPLITS, Dataset, Split, load, normalize_emotion
from iemocap.errors import DataError, RunError, UserError
from iemocap.metrics import accuracy, majority_baseline, weighted_f1
