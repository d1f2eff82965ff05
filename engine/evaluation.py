"""What both `evaluate` commands share: the data a checkpoint is evaluated on, and the report."""

import dataclasses
import os

import numpy as np
from absl import logging

from engine import datasets
from engine import records
from flags.config import Config
from flags.errors import ConfigError
from iemocap import metrics
from iemocap.data import Dataset
from iemocap.errors import DataError


def evaluation_data(checkpoint_config: Config, emotion: str, data_path: str,
                    input_dims: tuple) -> tuple[Config, Dataset, bool]:
  """(config, dataset, is_synthetic) to evaluate a checkpoint on: by default the data and emotion
  it was trained on; a data path that came from the checkpoint says so when it fails, and data
  of other feature sizes than the model's `input_dims` is refused."""
  config = dataclasses.replace(checkpoint_config, emotion=emotion or checkpoint_config.emotion,
                               data_path=data_path or checkpoint_config.data_path)
  try:
    dataset, is_synthetic, data_note = datasets.open_dataset(config)
  except DataError as e:
    if data_path or not config.data_path:
      raise
    raise DataError(f'{e} (that data path is the one stored in the checkpoint; pass --data_path '
                    'to evaluate on data elsewhere)') from None
  logging.info(data_note)
  if dataset.input_dims != tuple(input_dims):
    raise DataError(f'{dataset.path} holds features of sizes {dataset.input_dims} (covarep, '
                    f'facet, glove) but the checkpoint\'s model takes {tuple(input_dims)}: '
                    'evaluate it on the data of the sizes it was trained on')
  return config, dataset, is_synthetic


def evaluation_report(checkpoint_path: str, dataset: Dataset, is_synthetic: bool, split: str,
                      loss_sum: float, logits: np.ndarray, metadata: dict) -> dict:
  """What `evaluate` prints: the task's figures (F1 and accuracy; MAE, r, ...), mean loss and
  N of one split."""
  labels = dataset.split(split).label
  return {'checkpoint': os.path.abspath(checkpoint_path), 'emotion': dataset.emotion,
          'task': dataset.task, 'split': split, 'n': int(labels.shape[0]),
          **metrics.test_figures(dataset.task, labels, logits, dataset.corpus),
          'loss': dataset.mean_loss(loss_sum, split),
          'written_by': metadata.get('backend', 'unknown'), 'data': dataset.path,
          'synthetic': is_synthetic}


def format_evaluation(report: dict) -> str:
  note = ' (synthetic data)' if report['synthetic'] else ''
  figures = '  '.join(f'{name} {value}' for name, value, _ in records.figure_rows(
      {**report, 'majority_f1': None, 'majority_accuracy': None, 'baseline_mae': None}))
  return (f'{report["emotion"]} {report["split"]}{note}: n={report["n"]}  {figures}  '
          f'loss {report["loss"]:.4f}  (checkpoint by {report["written_by"]})')


def evaluation_request(values):
  """(checkpoint path, emotion or '' for the checkpoint's, data_path, split) from the flags of
  flags/evaluation.py; a workdir stands for its best model."""
  if not values.checkpoint:
    raise ConfigError('--checkpoint is required: pass the checkpoint.safetensors to evaluate')
  path = records.checkpoint_in(values.checkpoint)
  emotion = values.emotion if values['emotion'].present else ''
  return path, emotion, values.data_path, values.split
