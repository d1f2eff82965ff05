"""`python -m parity.gpu_check --out=gpu_check.json [--quick]`: a CUDA machine checked end to
end, its figures in one JSON file.

Every step is a subprocess with a timeout, and the steps share one time budget;
a step that fails, times out or finds no time left is recorded (with its last
stderr line) and the next one runs. The JSON is rewritten after every step, so
a run cut short still leaves its figures. The steps, the most wanted first:

- the devices: nvidia-smi, what jax and torch see;
- both trainers' --perf_steps (lmf_torch_npu on cuda in float32 and --amp=O1);
- the main job, sad, to its end: lmf_jax, and lmf_torch_npu on cuda (wall time, F1);
- `python -m parity --torch_device=cuda` (TF32 off, so the CPU's bounds apply);
- lmf_jax --num_seeds=N scaling (model-samples/s; N=1 is the perf figure).

--quick shrinks everything (a small synthetic set, a few steps, one emotion)
so that a CPU runs it in well under a minute; the CUDA steps are then recorded
as 'cuda: not available'. Without --quick a machine with no CUDA GPU is
refused. This process imports neither jax nor torch: on a GPU, jax would hold
most of the memory its children need.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from engine import cli
from engine import records
from flags import hardware
from iemocap import files
from iemocap import synthetic
from iemocap.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF_LINE = re.compile(r' on (?P<device>.+): (?P<steps>\d+) steps of .*step time (?P<ms>[\d.]+) '
                       r'ms, (?P<rate>[\d.]+) (?:model-)?samples/s')
QUICK_SIZES = (160, 60, 60)  # the test suite's small synthetic set
NO_CUDA = 'cuda: not available'
MIN_STEP_S = 15  # a step given less is skipped: it would only time out
# jax takes most of a GPU's memory when it starts; the probe and parity's workers share the GPU.
SHARED_GPU = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}


@dataclasses.dataclass(frozen=True)
class Plan:
  """How much of each step. The full plan's budget (7 min of steps) fits an H200 lease of 15
  minutes with the machine's start; what does not fit is skipped, least wanted last."""
  perf_emotions: tuple
  perf_steps: int
  num_seeds: tuple
  seed_emotions: tuple
  parity: tuple  # parity's arguments besides --torch_device and --json
  main: tuple  # the main job's arguments besides emotion, workdir, device
  shapes: tuple  # model-size flags of every trainer step (none: the presets')
  budget_s: float
  timeout_s: dict  # per kind of step

  def seed_steps(self, n):
    """Fewer steps for many models, whose steps take longer: 200, 50, 20 at N=16, 64, 256."""
    return min(self.perf_steps, max(20, 3200 // n))


FULL = Plan(perf_emotions=('sad', 'happy', 'angry', 'neutral'), perf_steps=200,
            num_seeds=(16, 64, 256), seed_emotions=('sad', 'angry'),
            parity=('--emotion=happy,sad,angry,neutral', '--jobs=4'), main=(), shapes=(),
            budget_s=420,
            timeout_s={'devices': 120, 'perf': 120, 'main': 240, 'parity': 300, 'num_seeds': 150})
QUICK = Plan(perf_emotions=('sad',), perf_steps=5, num_seeds=(4,), seed_emotions=('sad',),
             parity=('--emotion=sad', '--dtypes=float32', '--seeds=0', '--epochs=1',
                     '--train_samples=64'),
             main=('--epochs=2', '--patience=2'),
             shapes=('--audio_hidden=8', '--video_hidden=4', '--text_hidden=16', '--rank=4',
                     '--batch_size=32'),  # the trainer tests' small model
             budget_s=150,
             timeout_s={'devices': 90, 'perf': 90, 'main': 90, 'parity': 120, 'num_seeds': 90})


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  kind: str  # devices | perf | main | parity | num_seeds: its timeout and how it is read
  argv: tuple  # after `python`
  cuda: bool = False  # torch on cuda: skipped where torch sees no CUDA device
  workdir: str = ''  # where the step writes what is read back (main: results.json; parity: JSON)
  env: tuple = ()


def print_devices():
  """The probe step, run in a child: one JSON line of what jax and torch see."""
  found = {}
  try:
    import jax  # pylint: disable=import-outside-toplevel
    from lmf_jax import device as jax_device  # pylint: disable=import-outside-toplevel
    found.update(jax=jax_device.describe_devices(), jax_platform=jax.default_backend())
  except Exception as e:  # pylint: disable=broad-except  (a broken install is a finding)
    found.update(jax=f'unavailable: {type(e).__name__}: {e}', jax_platform='none')
  try:
    import torch  # pylint: disable=import-outside-toplevel
    found.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda)
    if torch.cuda.is_available():
      found.update(cuda=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                   cudnn=torch.backends.cudnn.version())
    else:
      found['cuda'] = ('not available (this torch build has no CUDA support)'
                       if torch.version.cuda is None else 'not available (torch sees no GPU)')
  except Exception as e:  # pylint: disable=broad-except
    found.update(torch=f'unavailable: {type(e).__name__}: {e}', cuda='not available')
  print(json.dumps(found))


def nvidia_smi():
  """nvidia-smi's name, memory and driver per GPU, or why there are none."""
  if shutil.which('nvidia-smi') is None:
    return 'not available: no nvidia-smi'
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                          '--format=csv,noheader'], capture_output=True, text=True, timeout=15,
                         check=False)
  except subprocess.TimeoutExpired:
    return 'not available: nvidia-smi did not answer in 15 s'
  lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
  if out.returncode != 0 or not lines:
    return f'not available: {last_line(out.stderr or out.stdout) or f"exit {out.returncode}"}'
  return lines


def last_line(text):
  lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
  return lines[-1] if lines else ''


def parse_perf(stdout):
  """The figures of the trainers' performance line (records.format_perf)."""
  matches = [PERF_LINE.search(line) for line in stdout.splitlines()]
  found = [m for m in matches if m]
  if not found:
    raise ValueError('no performance line in the output')
  m = found[-1]
  return {'device': m['device'], 'steps': int(m['steps']), 'step_ms': float(m['ms']),
          'samples_per_s': float(m['rate'])}


def parse_main(workdir):
  record = files.read_json(os.path.join(workdir, records.RESULTS_JSON))
  return {k: record[k] for k in ('f1', 'accuracy', 'epochs_run', 'best_epoch', 'stopped_by',
                                 'train_samples_per_s', 'wall_s')}


def parse_parity(path):
  """Passed/total, the failures, and the largest difference per (check, dtype) over emotions."""
  results = files.read_json(path)
  worst = {}
  for r in results:
    key = f'{r["check"]}/{r["dtype"]}'
    diff = r['max_diff']  # None: a mismatch of keys or a non-finite difference
    if key not in worst or diff is None or (worst[key]['max_diff'] is not None
                                            and diff > worst[key]['max_diff']):
      worst[key] = {'max_diff': diff, 'tol': r['tol'], 'where': f'{r["emotion"]}: {r["where"]}'}
  return {'passed': sum(r['passed'] for r in results), 'total': len(results),
          'failed': [f'{r["check"]} [{r["emotion"]}, {r["dtype"]}] {r["where"]}: '
                     f'{r["max_diff"]} > {r["tol"]}' for r in results if not r['passed']],
          'worst': worst}


DEVICES = Step('devices', 'devices',
               ('-c', 'from parity import gpu_check; gpu_check.print_devices()'),
               env=tuple(SHARED_GPU.items()))


def plan_steps(plan, data_args, scratch):
  """The steps after DEVICES, in the order they run: the most wanted figures first."""
  trainer_args = (*data_args, *plan.shapes)
  jax_train, torch_train = ('-m', 'lmf_jax.train'), ('-m', 'lmf_torch_npu.train')
  cuda = ('--device=cuda',)

  def perf(emotion):
    args = (f'--emotion={emotion}', f'--perf_steps={plan.perf_steps}', *trainer_args)
    return [Step(f'perf/lmf_jax/{emotion}', 'perf', jax_train + args),
            Step(f'perf/lmf_torch_npu/{emotion}/fp32', 'perf', torch_train + args + cuda, True),
            Step(f'perf/lmf_torch_npu/{emotion}/O1', 'perf',
                 torch_train + args + cuda + ('--amp=O1',), True)]

  def seeds(emotion):
    return [Step(f'num_seeds/{emotion}/{n}', 'num_seeds',
                 jax_train + (f'--emotion={emotion}', f'--num_seeds={n}',
                              f'--perf_steps={plan.seed_steps(n)}', *trainer_args))
            for n in plan.num_seeds]

  def main(backend, argv, on_cuda):
    workdir = os.path.join(scratch, f'main-{backend}')
    return Step(f'main/{backend}/sad', 'main', argv + ('--emotion=sad', f'--workdir={workdir}',
                                                       *trainer_args, *plan.main)
                + (cuda if on_cuda else ()), on_cuda, workdir)

  parity_json = os.path.join(scratch, 'parity.json')
  first, *rest = plan.perf_emotions
  steps = perf(first)
  steps += [main('lmf_jax', jax_train, False), main('lmf_torch_npu', torch_train, True)]
  steps.append(Step('parity/cuda', 'parity', ('-m', 'parity', '--torch_device=cuda',
                                              f'--json={parity_json}', *data_args, *plan.parity),
                    True, parity_json, tuple(SHARED_GPU.items())))
  steps += seeds(plan.seed_emotions[0])
  for emotion in rest:
    steps += perf(emotion)
  for emotion in plan.seed_emotions[1:]:
    steps += seeds(emotion)
  return steps


def run_step(step, timeout_s):
  """(status, seconds, stdout, stderr) of the step in its own process group, killed whole on
  timeout (parity's workers too)."""
  env = {**os.environ, **dict(step.env), 'PYTHONUNBUFFERED': '1',
         'PYTHONPATH': os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)}
  tick = time.perf_counter()
  proc = subprocess.Popen([sys.executable, *step.argv], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout_s)
    status = 'ok' if proc.returncode == 0 else 'failed'
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    status = 'timeout'
  return status, time.perf_counter() - tick, out, err


def read_figures(step, stdout):
  if step.kind == 'devices':
    return json.loads(last_line(stdout))
  if step.kind in ('perf', 'num_seeds'):
    return parse_perf(stdout)
  if step.kind == 'main':
    return parse_main(step.workdir)
  return parse_parity(step.workdir)


def record_step(step, timeout_s, cuda):
  """The step's JSON record: name, status, seconds, command, figures or why it has none."""
  command = 'python ' + ' '.join(step.argv)
  if step.cuda and not cuda:
    return {'name': step.name, 'status': 'skipped', 'command': command, 'error': NO_CUDA}
  if timeout_s < MIN_STEP_S:
    return {'name': step.name, 'status': 'skipped', 'command': command,
            'error': 'time budget spent'}
  status, seconds, out, err = run_step(step, timeout_s)
  entry = {'name': step.name, 'status': status, 'seconds': round(seconds, 1), 'command': command}
  if status == 'timeout':
    entry['error'] = f'timed out after {timeout_s:.0f} s; last stderr line: {last_line(err)}'
    return entry
  try:
    entry['figures'] = read_figures(step, out)
  except (OSError, ValueError, KeyError) as e:  # no figures: the failure's own line says why
    if status == 'ok':
      entry['status'] = 'failed'
    entry['error'] = last_line(err) if status == 'failed' else f'unreadable output: {e}'
    return entry
  if status == 'failed':  # parity exits 1 on a failing check; its figures still count
    entry['error'] = last_line(err)
  return entry


def scaling(report, plan):
  """{emotion: {N: model-samples/s}}: --num_seeds throughput, N=1 from the perf step."""
  steps = {entry['name']: entry for entry in report['steps']}
  table = {}
  for emotion in plan.seed_emotions:
    row = {}
    for n in (1, *plan.num_seeds):
      name = f'perf/lmf_jax/{emotion}' if n == 1 else f'num_seeds/{emotion}/{n}'
      figures = steps.get(name, {}).get('figures')
      row[str(n)] = figures['samples_per_s'] if figures else None
    table[emotion] = row
  return table


def describe(entry):
  """A step's figures in a few words, for the summary table."""
  if 'figures' not in entry:
    return entry.get('error', '')
  f = entry['figures']
  if 'samples_per_s' in f:
    return f'{f["step_ms"]:.2f} ms/step, {f["samples_per_s"]:.0f} samples/s'
  if 'f1' in f:
    return (f'F1 {100 * f["f1"]:.2f}, {f["epochs_run"]} epochs ({f["stopped_by"]}), '
            f'{entry["seconds"]:.0f} s wall')
  if 'total' in f:
    return f'{f["passed"]} of {f["total"]} checks passed' + (f'; {entry["error"]}'
                                                             if entry.get('error') else '')
  return f.get('jax', '')


def summary(report):
  lines = [f'nvidia-smi: {report["nvidia_smi"]}']
  devices = report['steps'][0].get('figures', {})
  lines.append(f'jax: {devices.get("jax", "?")}')
  lines.append(f'torch {devices.get("torch", "?")}: cuda {devices.get("cuda", "?")}')
  rows = [('step', 'status', 'seconds', 'figures')]
  for entry in report['steps']:
    seconds = f'{entry["seconds"]:.1f}' if 'seconds' in entry else ''
    rows.append((entry['name'], entry['status'], seconds, describe(entry)))
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  for row in rows:
    lines.append('  '.join(c.ljust(w) for c, w in zip(row[:3], widths)) + '  ' + row[3])
  for emotion, row in report['num_seeds'].items():
    lines.append(f'num_seeds {emotion} (model-samples/s): ' + ', '.join(
        f'N={n} {rate:.0f}' if rate else f'N={n} -' for n, rate in row.items()))
  lines.append(f'{report["wall_s"]:.0f} s in all')
  return '\n'.join(lines)


def cuda_refusal(entry):
  """The one line refusing a full run without a CUDA device for jax or torch, else None."""
  if 'figures' not in entry:
    return f'error: the devices step {entry["status"]}: {entry.get("error", "")}'
  devices = entry['figures']
  if isinstance(devices['cuda'], list) or devices['jax_platform'] == 'gpu':
    return None
  why = (hardware.unused_accelerator_warning('torch', 'cpu')
         or f'torch: cuda {devices["cuda"]}; jax runs on {devices["jax_platform"]}')
  return f'error: no CUDA GPU to check here ({why}); add --quick for a smoke test on the CPU'


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m parity.gpu_check',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='gpu_check.json', help='the JSON of figures')
  parser.add_argument('--quick', action='store_true', help='tiny runs: a smoke test, on a CPU too')
  parser.add_argument('--budget_s', type=float, help='seconds for all steps together (default: '
                      f'{FULL.budget_s:.0f}, --quick {QUICK.budget_s:.0f})')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    cli.check_output_file(args.out, '--out')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  plan = QUICK if args.quick else FULL
  budget = plan.budget_s if args.budget_s is None else args.budget_s
  started = time.perf_counter()
  report = {'mode': 'quick' if args.quick else 'full',
            'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'budget_s': budget,
            'host': {'cpus': os.cpu_count(), 'python': sys.version.split()[0],
                     'accelerators': [dataclasses.asdict(a)
                                      for a in hardware.visible_accelerators()]},
            'nvidia_smi': nvidia_smi(), 'steps': []}
  entry = record_step(DEVICES, min(plan.timeout_s['devices'], budget), cuda=False)
  refusal = None if args.quick else cuda_refusal(entry)
  if refusal:
    print(refusal, file=sys.stderr)
    return 2
  report['steps'].append(entry)
  cuda = isinstance(entry.get('figures', {}).get('cuda'), list)
  print(f'{DEVICES.name}: {entry["status"]} {describe(entry)}', flush=True)
  with tempfile.TemporaryDirectory(prefix='gpu-check-') as scratch:
    data_args = ((f'--data_path={synthetic.write(scratch, seed=0, sizes=QUICK_SIZES)}',)
                 if args.quick else ())  # full: the default synthetic set, made by the first step
    for step in plan_steps(plan, data_args, scratch):
      left = budget - (time.perf_counter() - started)
      entry = record_step(step, min(plan.timeout_s[step.kind], left), cuda)
      report['steps'].append(entry)
      print(f'{step.name}: {entry["status"]} {describe(entry)}', flush=True)
      report.update(wall_s=round(time.perf_counter() - started, 1),
                    num_seeds=scaling(report, plan))
      files.write_json(args.out, report)
  print(summary(report))
  print(f'figures: {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
