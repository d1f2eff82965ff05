"""`python -m parity.bench_predict [--emotion=sad|all] [--batch_size=512] [--rounds=5]
[--utterances=8192] [--json=OUT]`: inference speed of both Predictors (and of the exported graph in
ONNX Runtime) beside the forward pass's FLOP roofline on this machine.

Each contender lives in its own process, loaded and warmed up once; the processes then take
turns, one timed pass each per round, and every round also measures the machine's float32
matmul rate. Interleaving makes the contenders share whatever load the machine carries
(a shared machine's load moved one contender's figures by 2x between runs minutes apart
when each ran alone). Batch-1 latency is the median of `Predictor.logits` on one utterance
(host arrays in, host logits out, as an application calls it); throughput is the median
over rounds of a pass over --utterances in batches of --batch_size, and the best round is
reported too. The roofline is the median matmul rate (the better of numpy's and torch's on a
4096^2 product) over the forward pass's matmul FLOPs per utterance, counted from the model's
sizes. A benchmark, not a test: figures vary with the machine and its load.
"""

import concurrent.futures
import contextlib
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

from engine import cli
from engine import state_dict
from flags import presets
from flags.config import Config
from iemocap import data as data_lib
from iemocap import files
from iemocap.errors import UserError

CONTENDERS = ('lmf_jax', 'lmf_torch_npu', 'onnxruntime')
UTTERANCES = 8192
MATMUL_SIZE = 4096
# A pause before each timed task, so that the last contender's thread pools (ONNX Runtime's and
# OpenMP's spin after work by default) have gone to sleep before the next one starts.
SETTLE_S = 0.5
STEPS = 20  # GloVe steps per utterance in the 2018 data
LATENCY_CALLS = 200


def forward_flops(config, input_dims=state_dict.DEFAULT_INPUT_DIMS, steps=STEPS):
  """Matmul FLOPs (2 per multiply-add) of one utterance's eval-mode forward pass.

  Elementwise work (BatchNorm, ReLU, the LSTM's gate nonlinearities, the fusion's products) is
  left out: it is under 2% of the total at every preset and runs below the matmul rate anyway.
  """
  audio_in, visual_in, _ = input_dims
  subnets = sum(2 * (n_in * h + 2 * h * h) for n_in, h in ((audio_in, config.audio_hidden),
                                                           (visual_in, config.video_hidden)))
  text_linear = 2 * config.text_hidden * config.text_out
  fusion = sum(2 * config.rank * (d + 1) * config.output_dim
               for d in (config.audio_hidden, config.video_hidden, config.text_out))
  weighting = 2 * config.rank * config.output_dim  # fusion_weights over the rank axis
  return subnets + lstm_flops(config, input_dims, steps) + text_linear + fusion + weighting


def lstm_flops(config, input_dims=state_dict.DEFAULT_INPUT_DIMS, steps=STEPS):
  """The LSTM's share of forward_flops: per step, the input and recurrent projections to 4H."""
  hidden = config.text_hidden
  return steps * 2 * 4 * hidden * (input_dims[2] + hidden)


def matmul_gflops(size=MATMUL_SIZE, repeats=5):
  """This machine's float32 matmul rate (GFLOP/s): the better of numpy's and torch's."""
  a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
  best = 0.0
  for multiply in (np.matmul, lambda x, y: torch.from_numpy(x) @ torch.from_numpy(y)):
    multiply(a, a)  # warm-up: thread pools, first-touch of the output
    for _ in range(repeats):
      start = time.perf_counter()
      multiply(a, a)
      best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
  return best


def _predictor(contender, checkpoint_path, batch_size):
  """A function of (audio, visual, text) -> logits, loaded once."""
  if contender == 'lmf_jax':
    from lmf_jax import predict  # pylint: disable=import-outside-toplevel
    return predict.Predictor(checkpoint_path, batch_size=batch_size).logits
  if contender == 'lmf_torch_npu':
    from lmf_torch_npu import predict  # pylint: disable=import-outside-toplevel
    return predict.Predictor(checkpoint_path, batch_size=batch_size, device='cpu').logits
  from lmf_torch_npu import export  # pylint: disable=import-outside-toplevel
  arrays, config, _ = state_dict.load_checkpoint(checkpoint_path)
  session = export.session(export.export_onnx(arrays, config))

  def logits(audio, visual, text):
    return np.concatenate([export.run(session, audio[i:i + batch_size], visual[i:i + batch_size],
                                      text[i:i + batch_size])
                           for i in range(0, audio.shape[0], batch_size)])
  return logits


# The contender a worker process serves: its logits function and inputs (set by _load).
_WORKER = {}


def _load(contender, checkpoint_path, batch_size, utterances, matmul_size):
  """A worker's first task: load the contender and compile every batch shape it will run."""
  absl_flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  cli.reuse_freed_memory()
  logits = _predictor(contender, checkpoint_path, batch_size)
  rng = np.random.default_rng(0)
  inputs = (rng.standard_normal((utterances, data_lib.AUDIO_DIM), dtype=np.float32),
            rng.standard_normal((utterances, data_lib.VISUAL_DIM), dtype=np.float32),
            rng.standard_normal((utterances, STEPS, data_lib.TEXT_DIM), dtype=np.float32))
  for _ in range(10):  # compilation, thread pools
    logits(*(x[:1] for x in inputs))
  logits(*inputs)
  _WORKER.update(logits=logits, inputs=inputs, matmul_size=matmul_size)


def _latency_ms():
  """Median ms of LATENCY_CALLS one-utterance calls."""
  logits, one = _WORKER['logits'], tuple(x[:1] for x in _WORKER['inputs'])
  times = []
  for _ in range(LATENCY_CALLS):
    start = time.perf_counter()
    logits(*one)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def _throughput():
  """Utterances/s of one pass over the worker's inputs."""
  start = time.perf_counter()
  _WORKER['logits'](*_WORKER['inputs'])
  return _WORKER['inputs'][0].shape[0] / (time.perf_counter() - start)


def _matmul_rate():
  return matmul_gflops(_WORKER['matmul_size'])


def measure(checkpoint_path, batch_size, utterances, rounds, matmul_size):
  """{contender: (batch-1 ms, median samples/s, best samples/s)} and the median matmul GFLOP/s,
  the contenders taking turns in their own processes (module docstring)."""
  context = multiprocessing.get_context('spawn')
  load = (checkpoint_path, batch_size, utterances, matmul_size)

  def turn(pool, task):
    time.sleep(SETTLE_S)
    return pool.submit(task).result()

  with contextlib.ExitStack() as stack:
    pools = {c: stack.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=context))
             for c in CONTENDERS}
    # Loaded all at once, untimed; a task, not an initializer, so that a failure arrives as itself.
    for loaded in [pool.submit(_load, c, *load) for c, pool in pools.items()]:
      loaded.result()
    latency = {c: turn(pool, _latency_ms) for c, pool in pools.items()}
    rates, peaks = {c: [] for c in CONTENDERS}, []
    for round_index in range(rounds):
      for c, pool in pools.items():
        rates[c].append(turn(pool, _throughput))
      peaks.append(turn(pools[CONTENDERS[round_index % len(CONTENDERS)]], _matmul_rate))
  return ({c: (latency[c], statistics.median(rates[c]), max(rates[c])) for c in CONTENDERS},
          statistics.median(peaks))


def _checkpoint(emotion, directory):
  """A checkpoint of the emotion's preset with torch's initial weights (speed does not depend
  on the values)."""
  from lmf_torch_npu import checkpoint, model  # pylint: disable=import-outside-toplevel
  config = Config(emotion=emotion, **presets.preset(emotion))
  torch.manual_seed(0)
  arrays = checkpoint.to_state_dict(model.from_config(config).state_dict(), config)
  path = os.path.join(directory, f'{emotion}.safetensors')
  state_dict.save(path, arrays, config, {'backend': 'torch'})
  return path, config


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m parity.bench_predict',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--emotion', default='sad', help='all, or one of '
                      + ', '.join(data_lib.EMOTIONS))
  parser.add_argument('--batch_size', type=int, default=512)
  parser.add_argument('--rounds', type=int, default=5,
                      help='timed passes per contender, the contenders taking turns')
  parser.add_argument('--utterances', type=int, default=UTTERANCES,
                      help='random utterances per timed pass')
  parser.add_argument('--matmul_size', type=int, default=MATMUL_SIZE,
                      help='the square product the matmul rate (the roofline) is measured on')
  parser.add_argument('--json', metavar='OUT', help='also write the figures as JSON here')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for name in ('batch_size', 'rounds', 'utterances', 'matmul_size'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be >= 1')
  try:
    emotions = (data_lib.EMOTIONS if args.emotion.strip().lower() == 'all'
                else [data_lib.normalize_emotion(args.emotion)])
    if emotions[0] not in data_lib.EMOTIONS:
      raise data_lib.DataError(f'--emotion={args.emotion}: this benchmark measures the four '
                               'IEMOCAP presets; choose all or one of '
                               + ', '.join(data_lib.EMOTIONS))
    if args.json:
      cli.check_output_file(args.json, '--json')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{os.cpu_count()} CPUs; batch size {args.batch_size}, {args.utterances} utterances a '
        f'pass, {args.rounds} rounds with the contenders taking turns; samples/s is the median '
        'round, the roofline from the median matmul rate')
  print(f'{"preset":8} {"MFLOP/utt":>9} {"contender":14} {"batch-1 ms":>10} {"samples/s":>9} '
        f'{"best/s":>7} {"GFLOP/s":>7} {"roofline/s":>10} {"of it":>5}')
  rows = []
  with tempfile.TemporaryDirectory(prefix='bench-predict-') as directory:
    for emotion in emotions:
      path, config = _checkpoint(emotion, directory)
      flops = forward_flops(config)
      figures, peak = measure(path, args.batch_size, args.utterances, args.rounds,
                              args.matmul_size)
      roofline = peak * 1e9 / flops
      for contender, (latency, rate, best) in figures.items():
        rows.append({'emotion': emotion, 'contender': contender, 'mflop_per_utterance': flops / 1e6,
                     'batch1_latency_ms': latency, 'samples_per_s': rate,
                     'best_samples_per_s': best, 'matmul_gflops': peak,
                     'roofline_samples_per_s': roofline, 'of_roofline': rate / roofline,
                     'batch_size': args.batch_size, 'rounds': args.rounds})
        print(f'{emotion:8} {flops / 1e6:9.2f} {contender:14} {latency:10.2f} {rate:9.0f} '
              f'{best:7.0f} {peak:7.0f} {roofline:10.0f} {100 * rate / roofline:4.0f}%',
              flush=True)
  if args.json:
    files.write_json(args.json, rows)
  return 0


if __name__ == '__main__':
  sys.exit(main())
