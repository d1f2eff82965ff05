"""The data set a Config names: a file the user gave, or the cached synthetic stand-in."""

from absl import logging

from flags.config import Config
from iemocap import formats
from iemocap import synthetic
from iemocap import synthetic_formats
from iemocap.data import Dataset
from iemocap.errors import DataError


def open_dataset(config: Config) -> tuple[Dataset, bool, str]:
  """(Dataset, is_synthetic, a log line saying where the data came from); logs how many
  non-finite feature values each split had replaced. A regression set must have as many
  targets per utterance as the config's model has outputs."""
  dataset, is_synthetic, note = _open_dataset(config)
  if dataset.task == 'regression' and dataset.outputs != config.output_dim:
    raise DataError(f'{dataset.path} has {dataset.outputs} {config.emotion} values per utterance '
                    f'but the model has {config.output_dim} outputs: leave --output_dim out (the '
                    'data decides it)')
  for line in dataset.replaced_lines():
    logging.info('non-finite features set to 0: %s', line)
  return dataset, is_synthetic, note


def _open_dataset(config):
  if config.data_path:
    dataset = formats.load(config.data_path, config.emotion)
    synthetic_record = synthetic.describe(dataset.path)
    if synthetic_record is None:
      return dataset, False, f'data: {dataset.path} ({config.emotion})'
    return dataset, True, (f'data: {dataset.path} ({config.emotion}), a synthetic set (seed '
                           f'{synthetic_record["seed"]}): {_not_the_papers(dataset)}')
  try:
    if config.task == 'regression':
      path = synthetic_formats.default_path(config.emotion)
    else:
      path = synthetic.default_path()
  except (OSError, DataError) as e:
    raise DataError(f'cannot write the synthetic data set into its cache directory '
                    f'{synthetic.cache_dir()} ({e}): set LMF_CACHE_DIR to a writable directory, '
                    'or pass --data_path') from None
  dataset = formats.load(path, config.emotion)
  return dataset, True, (f'data: no --data_path given, so the synthetic {dataset.corpus} stand-in '
                         f'at {path} ({config.emotion}); {_not_the_papers(dataset)}')


def _not_the_papers(dataset):
  return ('its F1 is not the paper\'s F1' if dataset.task == 'classification'
          else 'its figures are not the paper\'s')
