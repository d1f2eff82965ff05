"""`python -m parity.bench [--emotion=sad] [--epochs=4] [--json=OUT]`: training speed of
lmf_jax, lmf_torch_npu and the 2018 training loop on the same data, preset and machine.

The 2018 loop is re-created as it behaved, not as it was written: a torch
DataLoader with 4 workers and shuffling (worker processes restarted every
epoch, batches pickled across), a `.item()` host sync after every step, the
for-loop Adam, and the valid split through a DataLoader as one batch. Each
figure comes from a fresh process, one at a time: the 2018 loop with the C
library's defaults as the 2018 code ran, each trainer as its command line runs
it. A benchmark, not a test: figures vary with the machine and its load.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from absl import flags as absl_flags
from absl import logging
from torch.utils.data import DataLoader

from engine import cli
from engine import datasets
from flags import presets
from flags.config import Config
from iemocap import data as data_lib
from iemocap import files
from iemocap.errors import UserError
from lmf_jax import device as jax_device
from lmf_jax import train as jax_train
from lmf_torch_npu import device as torch_device
from lmf_torch_npu import model as torch_model
from lmf_torch_npu import optimizer as torch_optimizer
from lmf_torch_npu import train as torch_train

WORKERS_2018 = 4
# The 2018 code's workers were forked (Linux's default then). This process is itself spawned,
# and its workers would be spawned too, each importing torch anew, every epoch.
WORKER_START = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else None
CONTENDERS = ('loop_2018', 'lmf_jax', 'lmf_torch_npu')


class Split2018(torch.utils.data.Dataset):
  """The 2018 IEMOCAP Dataset: one sample at a time, labels one-hot."""

  def __init__(self, split):
    self.audio, self.visual, self.text = split.audio, split.visual, split.text
    self.labels = np.eye(2, dtype=np.float32)[split.label]

  def __getitem__(self, i):
    return [self.audio[i, :], self.visual[i, :], self.text[i, :, :], self.labels[i]]

  def __len__(self):
    return self.audio.shape[0]


def loop_2018(config, dataset, epochs):
  """Per-epoch (train seconds, train+valid seconds) of the 2018 loop's behaviour."""
  torch.manual_seed(config.seed)
  model = torch_model.from_config(config, dataset.input_dims)
  groups = torch_optimizer.named_groups(model, config)
  optimizer = torch.optim.Adam(groups, weight_decay=config.weight_decay, foreach=False)
  criterion = torch.nn.CrossEntropyLoss(reduction='sum')
  train_set, valid_set = Split2018(dataset.train), Split2018(dataset.valid)
  times = []
  for _ in range(epochs):
    tick = time.perf_counter()
    model.train()
    average = 0.0
    for batch in DataLoader(train_set, batch_size=config.batch_size, num_workers=WORKERS_2018,
                            shuffle=True, multiprocessing_context=WORKER_START):
      model.zero_grad()
      x_a, x_v, x_t = (batch[i].float() for i in range(3))
      y = batch[-1].view(-1, 2).float().long()
      if x_a.shape[0] < 2:
        continue  # the 2018 loop crashed here (BatchNorm on one sample); skipping keeps timing
      loss = criterion(model(x_a, x_v, x_t), torch.max(y, 1)[1])
      loss.backward()
      average += loss.item() / len(train_set)  # the 2018 per-step host sync
      optimizer.step()
    train_s = time.perf_counter() - tick
    model.eval()
    for batch in DataLoader(valid_set, batch_size=len(valid_set), num_workers=WORKERS_2018,
                            shuffle=True, multiprocessing_context=WORKER_START):
      with torch.no_grad():
        y = batch[-1].view(-1, 2).float().long()
        valid = criterion(model(*(batch[i].float() for i in range(3))), torch.max(y, 1)[1])
        valid.item()
    times.append((train_s, time.perf_counter() - tick))
  return times


def backend_epochs(run, epochs):
  """Per-epoch (train seconds, train+valid seconds) of a trainer's run (as the engine runs it)."""
  times = []
  for epoch in range(1, epochs + 1):
    tick = time.perf_counter()
    run.train_epoch(epoch, [True])
    train_s = time.perf_counter() - tick
    run.evaluate('valid', best=False)
    times.append((train_s, time.perf_counter() - tick))
  return times


def summarise(times, n_train):
  """Throughput over the epochs after the first (which compiles or starts workers cold)."""
  steady = times[1:] or times
  return {'train_samples_per_s': n_train / statistics.median(t for t, _ in steady),
          'epoch_s': statistics.median(e for _, e in steady),
          'first_epoch_s': times[0][1], 'epochs_timed': len(steady)}


def preset_data(emotion, data_path):
  config = Config(emotion=emotion, data_path=data_path, seed=0, **presets.PRESETS[emotion])
  dataset, _, note = datasets.open_dataset(config)
  return config, dataset, note


def measure(contender, emotion, data_path, epochs):
  """(figures, the data's log line) of one contender on one preset; run in a process of its own."""
  absl_flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  config, dataset, note = preset_data(emotion, data_path)
  if contender == 'loop_2018':
    return summarise(loop_2018(config, dataset, epochs), dataset.train.n), note
  cli.reuse_freed_memory()  # as the trainers' command lines do
  jax_train.enable_compilation_cache()
  with tempfile.TemporaryDirectory() as workdir:
    config = dataclasses.replace(config, workdir=workdir)
    if contender == 'lmf_jax':
      run = jax_train.JaxRun(config, dataset)
    else:
      run = torch_train.TorchRun(config, dataset, *torch_train.resolve(
          torch_device.TorchOptions(device='cpu', amp='off')))
    return summarise(backend_epochs(run, epochs), dataset.train.n), note


def in_fresh_process(*args):
  """measure(*args) in a new spawned process, so no contender inherits another's heap,
  thread pools or forked workers."""
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    return pool.submit(measure, *args).result()


def speedups(figures):
  base = figures['loop_2018']
  for row in figures.values():
    row['speedup_vs_2018_train'] = row['train_samples_per_s'] / base['train_samples_per_s']
    row['speedup_vs_2018_epoch'] = base['epoch_s'] / row['epoch_s']
  return figures


def format_rows(emotion, figures):
  lines = [f'{emotion}: {"":14s} train samples/s   epoch s (train+valid)   x 2018 (train, epoch)']
  for name, row in figures.items():
    lines.append(f'  {name:14s} {row["train_samples_per_s"]:15.0f}   {row["epoch_s"]:21.3f}   '
                 f'{row["speedup_vs_2018_train"]:5.2f}, {row["speedup_vs_2018_epoch"]:5.2f}')
  return '\n'.join(lines)


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m parity.bench', description=__doc__.split('\n\n')[0])
  parser.add_argument('--emotion', default='sad', help='all, or one of ' + ', '.join(data_lib.EMOTIONS))
  parser.add_argument('--data_path', default='')
  parser.add_argument('--epochs', type=int, default=4, help='epochs per trainer; the first is '
                      'reported apart (compilation, cold workers)')
  parser.add_argument('--json', metavar='OUT')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  absl_flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  try:
    if args.json:
      cli.check_output_file(args.json, '--json')
    emotions = (data_lib.EMOTIONS if args.emotion == 'all'
                else [data_lib.normalize_emotion(args.emotion)])
    if emotions[0] not in data_lib.EMOTIONS:
      raise data_lib.DataError(f'--emotion={args.emotion}: this benchmark measures the four '
                               'IEMOCAP presets; choose all or one of '
                               + ', '.join(data_lib.EMOTIONS))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  report = {'machine': f'{os.cpu_count()} CPU cores, torch {torch.__version__}, '
                        f'jax {jax_device.run_device()}', 'emotions': {}}
  for emotion in emotions:
    figures = {}
    for name in CONTENDERS:
      try:
        figures[name], note = in_fresh_process(name, emotion, args.data_path, args.epochs)
      except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(note, flush=True)
    report['emotions'][emotion] = speedups(figures)
    print(format_rows(emotion, report['emotions'][emotion]), flush=True)
  if args.json:
    files.write_json(args.json, report)
  return 0


if __name__ == '__main__':
  sys.exit(main())
