"""A population run as separate trials: one single run per member, each in its own workdir.

The production path cannot put many models in one program (torch.vmap does not
batch nn.LSTM), so each member is a trial: exactly the run that `--seed=<its
seed>` with its setting trains alone, in `<workdir>/trials/<member>-seed<seed>/`.
A scheduler runs the trials (one after another in this process, or on Ray); a
trial that is cut short (its worker killed, the command stopped) continues from
its own train state when it runs again, so it ends as it would have uninterrupted,
and a finished trial is never run twice. Once every trial has finished, the
population's outputs are written as engine.population writes them: members,
mean +- spread, the setting chosen on validation and its best model.
"""

import dataclasses
import os
import time
from typing import Callable, Optional, Protocol, Sequence

from absl import logging

from engine import population
from engine import records
from engine import state_dict
from engine.errors import Interrupted, StopRequested
from flags.config import Config
from iemocap.data import Dataset
from iemocap.files import read_json

# Runs (or resumes) one trial in its config's workdir, calling `on_epoch_end` (keyword, may be
# None) after each saved epoch; returns why it kept no model (its loss was not finite from the
# first epoch), else None. Ray pickles it: a module-level function or a functools.partial of one.
RunTrial = Callable[..., Optional[str]]


@dataclasses.dataclass(frozen=True)
class Trial:
  """One member of the population and the config it trains alone (workdir: its trial dir)."""
  member: int
  config: Config

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
    """The lowest valid loss this trial has reached so far (its metrics.jsonl), if any."""
    try:
      rows = records.read_metrics(self.config.workdir)
    except (OSError, ValueError, records.RunError):
      return None  # being rewritten, or damaged: the trial itself will say so
    return rows[-1]['best_valid_loss'] if rows else None


def trial_dir(workdir: str, member: int, config: Config) -> str:
  return os.path.join(workdir, records.TRIALS_DIR, f'{member}-seed{config.seed}')


class Progress:
  """Trials done / running / pending and the best valid loss so far, logged when they change."""

  def __init__(self, trials: Sequence[Trial]):
    self.trials = list(trials)
    self.done = {t.member for t in self.trials if t.finished}
    self.last = None

  def finished(self, member: int) -> None:
    self.done.add(member)

  def report(self) -> None:
    running = [t for t in self.trials if t.member not in self.done and t.running()]
    losses = [(loss, t.member) for t in self.trials
              if (t.member in self.done or t in running)
              and (loss := t.best_valid_loss()) is not None]
    pending = len(self.trials) - len(self.done) - len(running)
    line = f'trials: {len(self.done)} done, {len(running)} running, {pending} pending'
    if losses:
      loss, member = min(losses)
      line += f'; best valid loss so far {loss:.4f} (member {member})'
    if line != self.last:
      logging.info('%s', line)
      self.last = line


class Scheduler(Protocol):
  """Runs trials to their end; where and how many at once is the scheduler's business."""
  description: str

  def run(self, trials: Sequence[Trial], run_trial: RunTrial, progress: Progress,
          on_epoch_end: Optional[Callable[[int], None]]) -> dict:
    """{member: why it kept no model} for the trials that kept none. `on_epoch_end` raises
    StopRequested when the command is asked to stop."""


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
        why = run_trial(trial.config, on_epoch_end=check if on_epoch_end else None)
      except Interrupted:
        if requests:
          raise requests[0] from None  # the command's stop, not the trial's own
        raise
      if why:
        no_model[trial.member] = why
      progress.finished(trial.member)
    progress.report()
    return no_model


def _trial_result(trial: Trial, member_config: Config, no_model: Optional[str]):
  """(member record, history rows, train seconds) of a trial, as engine.population records it."""
  record = {'member': trial.member, 'seed': member_config.seed, **member_config.hparams()}
  if no_model:
    return ({**record, 'best_epoch': 0, 'best_valid_loss': None, 'epochs_run': 1,
             'stopped_by': 'diverged', 'f1': None, 'accuracy': None, 'test_loss': None,
             'diverged': no_model}, [])
  result = read_json(os.path.join(trial.config.workdir, records.RESULTS_JSON))
  record.update({key: result[key] for key in ('best_epoch', 'best_valid_loss', 'epochs_run',
                                              'stopped_by', 'f1', 'accuracy', 'test_loss',
                                              'train_samples_per_s', 'device')})
  return record, records.read_metrics(trial.config.workdir)


def train_trials(config: Config, members: Sequence[Config], scheduler: Scheduler,
                 run_trial: RunTrial, dataset: Dataset, is_synthetic: bool, backend: str,
                 save_members: bool = False,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> dict:
  """Runs every unfinished trial of the population in config.workdir (claimed by the caller),
  then writes the population's outputs; returns results.json's record."""
  workdir = config.workdir
  started = time.perf_counter()
  trials = [Trial(m, dataclasses.replace(c, workdir=trial_dir(workdir, m, c)))
            for m, c in enumerate(members)]
  pending = [t for t in trials if not t.finished]
  logging.info('%d trials (%d finished before), %s', len(trials), len(trials) - len(pending),
               scheduler.description)
  progress = Progress(trials)
  try:
    no_model = scheduler.run(pending, run_trial, progress, on_epoch_end)
  except StopRequested as stop:
    raise Interrupted(f'stopped by {stop.reason}: {len(progress.done)} of {len(trials)} trials '
                      f'finished, the others keep their last saved epoch in {workdir}: rerun the '
                      'same command with --resume to continue', stop.exit_code) from None
  member_records, history = [], {}
  for trial, member_config in zip(trials, members):
    record, rows = _trial_result(trial, member_config, no_model.get(trial.member))
    member_records.append(record)
    for row in rows:
      epoch = history.setdefault(row['epoch'], {'train_loss': {}, 'valid_loss': {}})
      epoch['train_loss'][trial.member] = row['train_loss']
      epoch['valid_loss'][trial.member] = row['valid_loss']
  ran = [r for t, r in zip(trials, member_records) if t in pending]
  wall_s = time.perf_counter() - started
  devices = sorted({r['device'] for r in member_records if r.get('device')})
  record = population.summarise(
      config, members, member_records, dataset, is_synthetic, backend=backend,
      device=f'{"; ".join(devices)}; trials {scheduler.description}',
      # Model-samples per second over the trials this command ran, start-up included.
      throughput=dataset.train.n * sum(r['epochs_run'] for r in ran) / wall_s if ran else 0.0,
      wall_s=wall_s)
  population.write_metrics(workdir, history)

  def best_arrays(member):
    if member_records[member]['best_valid_loss'] is None:
      return None
    return state_dict.load(os.path.join(trials[member].config.workdir, records.CHECKPOINT))[0]

  population.write_outputs(config, members, history, best_arrays, record, save_members)
  return record
