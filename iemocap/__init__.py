"""The framework-neutral data layer (numpy only): loading, validation, the synthetic
stand-in, batching and metrics. Training runs live in engine/."""

from iemocap.batching import epoch_batches
from iemocap.data import EMOTIONS, SPLITS, Dataset, Split, normalize_emotion
from iemocap.errors import DataError, UserError
from iemocap.formats import load
from iemocap.metrics import accuracy, majority_baseline, weighted_f1
