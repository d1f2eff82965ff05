"""A population run as separate trials: single runs (or packs of members), each in its own workdir.

The production path cannot put many models in one program (torch.vmap does not
batch nn.LSTM), so each member is a trial: exactly the run that `--seed=<its
seed>` with its setting trains alone, in `<workdir>/trials/<member>-seed<seed>/`.
lmf_jax can send packs instead: several members of one shape trained as one
population (engine/population.py) in `<workdir>/trials/pack<k>/`. A scheduler
runs the trials (one after another in this process, or on Ray); a trial that is
cut short (its worker killed, the command stopped) continues from its own train
state when it runs again, so it ends as it would have uninterrupted, and a
finished trial is never run twice. Once every trial has finished, the
population's outputs are written as engine.population writes them: members,
mean +- spread, the setting chosen on validation and its best model.
"""

import dataclasses
import math
import os
import time
from typing import Callable, Optional, Protocol, Sequence

from absl import logging

from engine import population
from engine import records
from engine import state_dict
from engine.errors import Interrupted, StopRequested
from flags.config import Config
from iemocap import metrics
from iemocap.data import Dataset
from iemocap.files import read_json

# Runs (or resumes) one trial in its workdir, calling `on_epoch_end` (keyword, may be None)
# after each saved epoch; returns why it kept no model (its loss was not finite from the first
# epoch), else None. Ray pickles it: a module-level function or a functools.partial of one.
RunTrial = Callable[..., Optional[str]]


@dataclasses.dataclass(frozen=True)
class Trial:
  """Members of the population trained together (usually one) and where: `config` is the
  first member's with the trial's workdir; `configs` are every member's, in that workdir."""
  members: tuple
  config: Config
  configs: tuple

  @property
  def name(self) -> str:
    return os.path.basename(self.config.workdir)

  @property
  def finished(self) -> bool:
    return os.path.exists(os.path.join(self.config.workdir, records.RESULTS_JSON))

  def running(self) -> bool:
    """Whether a process holds this trial's workdir now (its lock file names the holder)."""
    try:
      return os.path.getsize(os.path.join(self.config.workdir, records.LOCK)) > 0
    except OSError:
      return False

  def best_valid_loss(self) -> Optional[float]:
    """The lowest valid loss any of its members has reached so far (its metrics.jsonl)."""
    try:
      rows = records.read_metrics(self.config.workdir)
    except (OSError, records.RunError):
      return None  # being rewritten, or damaged: the trial itself will say so
    losses = [v for row in rows for v in (row['valid_loss'].values()
                                          if isinstance(row['valid_loss'], dict)
                                          else [row['valid_loss']])]
    return min(losses) if losses else None


def make_trials(workdir: str, members: Sequence[Config], pack_size: int = 1) -> list:
  """Trials of at most `pack_size` members of one shape (one program each), in member order."""
  trials = []
  for group in population.shape_groups(members):
    for start in range(0, len(group), pack_size):
      ids = tuple(group[start:start + pack_size])
      name = (f'{ids[0]}-seed{members[ids[0]].seed}' if pack_size == 1
              else f'pack{len(trials)}')
      directory = os.path.join(workdir, records.TRIALS_DIR, name)
      configs = tuple(dataclasses.replace(members[i], workdir=directory) for i in ids)
      trials.append(Trial(ids, configs[0], configs))
  return trials


def packs_for(models: int, slots: int) -> int:
  """Members per pack so that `models` fill `slots` places at once."""
  return max(1, math.ceil(models / max(slots, 1)))


class Progress:
  """Trials done / running / pending and the best valid loss so far, logged when they change."""

  def __init__(self, trials: Sequence[Trial]):
    self.trials = list(trials)
    self.done = {t.name for t in self.trials if t.finished}
    self.last = None

  def finished(self, trial: Trial) -> None:
    self.done.add(trial.name)

  def report(self) -> None:
    running = [t for t in self.trials if t.name not in self.done and t.running()]
    losses = [(loss, t.name) for t in self.trials
              if (t.name in self.done or t in running)
              and (loss := t.best_valid_loss()) is not None]
    pending = len(self.trials) - len(self.done) - len(running)
    line = f'trials: {len(self.done)} done, {len(running)} running, {pending} pending'
    if losses:
      loss, name = min(losses)
      line += f'; best valid loss so far {loss:.4f} ({name})'
    if line != self.last:
      logging.info('%s', line)
      self.last = line


class Scheduler(Protocol):
  """Runs trials to their end; where and how many at once is the scheduler's business."""
  description: str

  def run(self, trials: Sequence[Trial], run_trial: RunTrial, progress: Progress,
          on_epoch_end: Optional[Callable[[int], None]]) -> dict:
    """{trial name: why it kept no model} for the trials that kept none. `on_epoch_end`
    raises StopRequested when the command is asked to stop."""


class InProcess:
  """One trial after another in this process (no cluster needed)."""
  description = 'one trial after another in this process'

  def run(self, trials, run_trial, progress, on_epoch_end):
    no_model, requests = {}, []

    def check(epoch):
      try:
        on_epoch_end(epoch)
      except StopRequested as stop:
        requests.append(stop)
        raise

    for trial in trials:
      progress.report()
      try:
        why = run_trial(trial, on_epoch_end=check if on_epoch_end else None)
      except Interrupted:
        if requests:
          raise requests[0] from None  # the command's stop, not the trial's own
        raise
      if why:
        no_model[trial.name] = why
      progress.finished(trial)
    progress.report()
    return no_model


def _trial_results(trial: Trial, no_model: Optional[str]):
  """[(member record, its metrics rows, its best checkpoint file or None)] of a trial's members,
  as engine.population records them (a single run's files, or a pack's population files)."""
  if no_model:
    return [({'member': m, 'seed': c.seed, **c.hparams(), 'best_epoch': 0,
              'best_valid_loss': None, 'epochs_run': 1, 'stopped_by': 'diverged',
              **population.no_figures(c.task), 'test_loss': None, 'diverged': no_model}, [], None)
            for m, c in zip(trial.members, trial.configs)]
  result = read_json(os.path.join(trial.config.workdir, records.RESULTS_JSON))
  rows = records.read_metrics(trial.config.workdir)
  if 'members' not in result:  # a single run
    keys = ('best_epoch', 'best_valid_loss', 'epochs_run', 'stopped_by', 'test_loss',
            'train_samples_per_s', 'device', *metrics.FIGURES[trial.config.task],
            'mae_per_target', 'corr_per_target')
    record = {'member': trial.members[0], 'seed': trial.config.seed, **trial.config.hparams(),
              **{k: result[k] for k in keys if k in result}}
    return [(record, rows, os.path.join(trial.config.workdir, records.CHECKPOINT))]
  out = []
  for local, member in enumerate(trial.members):
    record = {**result['members'][local], 'member': member, 'device': result['device']}
    own = [{'epoch': r['epoch'], 'train_loss': r['train_loss'][str(local)],
            'valid_loss': r['valid_loss'][str(local)]} for r in rows
           if str(local) in r['valid_loss']]
    path = os.path.join(trial.config.workdir, records.member_checkpoint(local, record['seed']))
    out.append((record, own, path if record['best_valid_loss'] is not None else None))
  return out


def train_trials(config: Config, members: Sequence[Config], scheduler: Scheduler,
                 run_trial: RunTrial, dataset: Dataset, is_synthetic: bool, backend: str,
                 save_members: bool = False, pack_size: int = 1,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> dict:
  """Runs every unfinished trial of the population in config.workdir (claimed by the caller),
  then writes the population's outputs; returns results.json's record."""
  workdir = config.workdir
  started = time.perf_counter()
  trials = make_trials(workdir, members, pack_size)
  pending = [t for t in trials if not t.finished]
  logging.info('%d trials of %d models (%d finished before), %s', len(trials), len(members),
               len(trials) - len(pending), scheduler.description)
  progress = Progress(trials)
  try:
    no_model = scheduler.run(pending, run_trial, progress, on_epoch_end)
  except StopRequested as stop:
    raise Interrupted(f'stopped by {stop.reason}: {len(progress.done)} of {len(trials)} trials '
                      f'finished, the others keep their last saved epoch in {workdir}: rerun the '
                      'same command with --resume to continue', stop.exit_code) from None
  member_records, history, checkpoints = [None] * len(members), {}, {}
  epochs_ran = 0
  for trial in trials:
    for record, rows, path in _trial_results(trial, no_model.get(trial.name)):
      member = record['member']
      member_records[member], checkpoints[member] = record, path
      if trial in pending:
        epochs_ran += record['epochs_run']
      for row in rows:
        epoch = history.setdefault(row['epoch'], {'train_loss': {}, 'valid_loss': {}})
        epoch['train_loss'][member] = row['train_loss']
        epoch['valid_loss'][member] = row['valid_loss']
  wall_s = time.perf_counter() - started
  devices = sorted({r['device'] for r in member_records if r.get('device')})
  record = population.summarise(
      config, members, member_records, dataset, is_synthetic, backend=backend,
      device=f'{"; ".join(devices)}; trials {scheduler.description}',
      # Model-samples per second over the trials this command ran, start-up included.
      throughput=dataset.train.n * epochs_ran / wall_s, wall_s=wall_s)
  population.write_metrics(workdir, history)

  def best_arrays(member):
    path = checkpoints[member]
    return None if path is None else state_dict.load(path)[0]

  population.write_outputs(config, members, history, best_arrays, record, save_members)
  return record
