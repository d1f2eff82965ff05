"""`python -m parity [--data_path=...] [--emotion=all|sad|...] [--json=OUT]`: lmf_jax against
lmf_torch_npu on shared IEMOCAP batches; prints a table and exits 1 if any check fails.

Checks 1-6 run in float32 with the issue's bounds and again in float64 (JAX
x64, torch double), where the two backends are the same algorithm and agree to
~1e-12; the AMP, ONNX export and dropout checks run once. Tolerances:
parity/tolerances.py.

The torch side runs on the CPU, or with --torch_device=cuda|npu on that device;
JAX runs on its default device. On a GPU, TF32 is turned off on both sides and
the same bounds apply: float32 then differs by summation order only, as between
two CPUs, and float64 stays IEEE double throughout (cuBLAS and cuDNN's LSTM
use no reduced precision for doubles by default). Neither has been measured on
a GPU yet: parity/gpu_check.py records it. float64 on an Ascend NPU is untried:
check there with --dtypes=float32 first.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import time


from absl import flags as absl_flags

from engine import cli
from engine import datasets
from flags import definitions
from iemocap import data as data_lib
from iemocap import files
from iemocap.errors import UserError
from parity import checks


def parse_args(argv):
  parser = cli.ArgumentParser(prog='python -m parity', description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_path', default='', help='iemocap.pkl/.npz or its directory; '
                      'empty: the synthetic stand-in')
  parser.add_argument('--emotion', default='all', help='all (the four emotions and the two '
                      'regression targets of the synthetic stand-ins, or what --data_path '
                      'holds), or one of ' + ', '.join(data_lib.TARGETS)
                      + ' (several: comma-separated)')
  parser.add_argument('--json', metavar='OUT', help='also write the results as a JSON list here')
  parser.add_argument('--epochs', type=int, default=2,
                      help='epochs of the short training runs (checks 5, 6 and 8)')
  parser.add_argument('--seeds', type=int, default=2,
                      help='seeds per backend of the dropout-on check (0 skips it)')
  parser.add_argument('--dtypes', default=','.join(checks.DTYPES),
                      help='float32,float64 (default both)')
  parser.add_argument('--batch_size', type=int, default=32, help='minibatch size of the '
                      'training checks (shapes stay the preset\'s); 0: the preset\'s own')
  parser.add_argument('--train_samples', type=int, default=640, help='training utterances the '
                      'training checks use (the first ones); 0: the whole split')
  parser.add_argument('--torch_device', default='cpu', choices=('cpu', 'cuda', 'npu'),
                      help='where the torch side runs (JAX runs on its default device)')
  parser.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1),
                      help='emotions checked at once, in worker processes (compilation is '
                      'single-threaded, so two overlap well on two cores)')
  args = parser.parse_args(argv)
  if args.epochs < 1 or args.seeds < 0 or args.batch_size < 0 or args.train_samples < 0:
    parser.error('--epochs must be >= 1; --seeds, --batch_size, --train_samples >= 0')
  if args.seeds == 1:
    parser.error('--seeds must be 0 (skip the dropout-on check) or at least 2 (a spread needs two)')
  dtypes = [d.strip() for d in args.dtypes.split(',') if d.strip()]
  if not dtypes or any(d not in checks.DTYPES for d in dtypes):
    parser.error(f'--dtypes={args.dtypes}: choose from {",".join(checks.DTYPES)}')
  args.dtypes = dtypes
  return args


def table(results):
  rows = [('check', 'emotion', 'dtype', 'max diff', 'tolerance', 'result', 'where')]
  for r in results:
    rows.append((r.check, r.emotion, r.dtype, f'{r.max_diff:.3g}', f'{r.tol:.3g}',
                 'pass' if r.passed else 'FAIL', r.where))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  absl_flags.FLAGS.mark_as_parsed()  # the libraries log through absl; parity has its own parser
  started = time.perf_counter()
  try:
    if args.json:
      cli.check_output_file(args.json, '--json')
    emotions = (list(definitions.targets_in(args.data_path))
                if args.emotion.strip().lower() == 'all'
                else [data_lib.normalize_emotion(e) for e in args.emotion.split(',')])
    datasets.open_dataset(checks.parity_config(emotions[0], args.data_path))  # fail fast, once
    choice = checks.torch_choice(args.torch_device)
    options = {k: getattr(args, k) for k in ('data_path', 'epochs', 'seeds', 'dtypes',
                                             'batch_size', 'train_samples', 'jobs',
                                             'torch_device')}
    if args.jobs > 1 and len(emotions) > 1:
      context = multiprocessing.get_context('spawn')
      with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        outcomes = list(pool.map(checks.check_emotion, emotions, [options] * len(emotions)))
    else:
      outcomes = [checks.check_emotion(emotion, options) for emotion in emotions]
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results = [r for found, _, _ in outcomes for r in found]
  is_synthetic = all(synthetic for _, _, synthetic in outcomes)
  print(outcomes[0][1])
  print(table(results))
  failed = [r for r in results if not r.passed]
  print(f'{len(results) - len(failed)} of {len(results)} checks passed in '
        f'{time.perf_counter() - started:.0f} s' + ('' if is_synthetic else ' (real data)')
        + ('' if choice.kind == 'cpu' else f' (torch on {choice.name})'))
  for r in failed:
    print(f'FAILED: {r}', file=sys.stderr)
  if args.json:
    files.write_json(args.json, [r.as_dict() for r in results])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
