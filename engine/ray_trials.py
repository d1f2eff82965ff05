"""Trials on Ray: as many at once as a cluster's NPUs, GPUs or CPU cores allow.

Ray (the optional `cluster` extra) is imported when a scheduler is made, never at
import. Without an address Ray starts on this machine for the command and stops
with it; `auto` or HOST:PORT joins a running cluster. The dashboard and Ray's
usage reporting are off. Each trial is a Ray task that asks for one accelerator
(or CPU cores) and writes into its trial directory, so on several machines the
workdir and the data must be on a file system every node sees. A trial whose
worker dies is retried by Ray and resumes from its own train state.
"""

import contextlib
import os
import socket
from typing import Optional

from absl import logging

from engine.errors import RunError
from engine.trials import Progress
from flags.errors import ConfigError
from iemocap.errors import UserError

INSTALL = ('install the cluster extra (python3 run.py installs it; or pip install -e '
           '".[cluster]")')
RETRIES = 3  # times Ray runs a trial again after its worker or node died
POLL_S = 0.5  # how often the command checks for a stop request and reports progress


def import_ray():
  """The ray module, or one line saying how to install it."""
  try:
    import ray  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(f'Ray is not installed: {INSTALL}, or run the trials in this process '
                      'with --ray_address=none') from None
  return ray


def available() -> bool:
  try:
    import_ray()
  except ConfigError:
    return False
  return True


@contextlib.contextmanager
def connect(address: str):
  """Ray for the duration of the block: started here when `address` is '' or 'local', joined
  otherwise ('auto' or HOST:PORT). Yields the cluster's resources ({'CPU': 8.0, 'NPU': 8.0...})."""
  ray = import_ray()
  os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')  # nothing is reported to anyone
  local = address in ('', 'local')
  if not local and address != 'auto':
    _check_reachable(address)
  try:
    if local:
      ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
      ray.init(address=address, log_to_driver=False, configure_logging=False)
  except ConnectionError as e:
    raise ConfigError(f'--ray_address={address}: no Ray cluster answered ({e}); start one with '
                      '`ray start --head`, set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN) if it '
                      'checks tokens, or leave --ray_address empty to start Ray here') from None
  try:
    resources = ray.cluster_resources()
    logging.info('Ray %s (%s): %s', ray.__version__, 'started here' if local else address,
                 {k: v for k, v in resources.items() if k in ('CPU', 'GPU', 'NPU')})
    yield resources
  finally:
    ray.shutdown()


def _check_reachable(address):
  """One line at once for a HOST:PORT nothing listens on (Ray itself retries for minutes)."""
  host, _, port = address.rpartition(':')
  if '://' in address or not host or not port.isdigit():
    return  # a ray:// client address or another form: Ray judges it
  try:
    socket.create_connection((host, int(port)), timeout=10).close()
  except OSError as e:
    raise ConfigError(f'--ray_address={address}: nothing answers there ({e.strerror or e}); '
                      'start the cluster with `ray start --head --port=PORT`, or leave '
                      '--ray_address empty to start Ray here') from None


def _run_trial(run_trial, trial):
  """The Ray task: one trial, in a worker that Ray placed on its devices."""
  return run_trial(trial)


class RayScheduler:
  """Submits every trial as a Ray task asking for `options` (num_cpus, num_gpus, resources)."""

  def __init__(self, options: dict, slots: int):
    self.options = options
    self.description = f'on Ray, up to {slots} at once ({_describe(options)} each)'

  def run(self, trials, run_trial, progress: Progress, on_epoch_end):
    ray = import_ray()
    task = ray.remote(_run_trial).options(max_retries=RETRIES, retry_exceptions=False,
                                          **self.options)
    running = {task.remote(run_trial, trial): trial for trial in trials}
    no_model = {}
    try:
      while running:
        done, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL_S)
        for ref in done:
          trial = running.pop(ref)
          why = _result(ray, ref, trial)
          if why:
            no_model[trial.name] = why
          progress.finished(trial)
        progress.report()
        if on_epoch_end is not None:
          on_epoch_end(0)  # raises StopRequested after a signal
    except BaseException:
      _cancel(ray, list(running))
      raise
    return no_model


def _result(ray, ref, trial) -> Optional[str]:
  """A finished task's value; its error as this command's error (a trial's user error is ours)."""
  try:
    return ray.get(ref)
  except ray.exceptions.RayTaskError as e:
    if isinstance(e.cause, UserError):
      raise e.cause from None
    raise
  except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
          ray.exceptions.OutOfMemoryError) as e:
    raise RunError(f'trial {trial.name} lost its worker '
                   f'{RETRIES + 1} times ({type(e).__name__}); it keeps its last saved epoch in '
                   f'{trial.config.workdir}: rerun with --resume') from None


def _cancel(ray, refs):
  """Stops running trials (each keeps its last saved epoch) and waits for them to end."""
  for ref in refs:
    ray.cancel(ref)
  for ref in refs:
    with contextlib.suppress(Exception):
      ray.get(ref, timeout=60)


def _describe(options):
  parts = [f'{options.get("num_cpus", 1):g} CPU']
  if options.get('num_gpus'):
    parts.append(f'{options["num_gpus"]:g} GPU')
  parts += [f'{v:g} {k}' for k, v in options.get('resources', {}).items()]
  return ', '.join(parts)
