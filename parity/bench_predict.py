"""`python -m parity.bench_predict [--emotion=sad|all] [--batch_size=512] [--json=OUT]`: inference
speed of both Predictors (and of the exported graph in ONNX Runtime) beside the forward pass's
FLOP roofline on this machine.

Batch-1 latency is the median of `Predictor.logits` on one utterance (host arrays in, host
logits out, as an application calls it); throughput is the best of 5 passes over 8192
utterances in batches of --batch_size. The roofline is the machine's float32 matmul rate (the
better of numpy's and torch's on a 4096^2 product, measured in the same process right after)
over the forward pass's matmul FLOPs per utterance, counted from the model's sizes. Each
contender runs in a fresh process, one at a time. A benchmark, not a test: figures vary with
the machine and its load.
"""

import concurrent.futures
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


def matmul_gflops(size=4096, repeats=5):
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


def measure(contender, checkpoint_path, batch_size):
  """(batch-1 latency in ms, samples/s (best of 5), matmul GFLOP/s) of one contender, in a
  fresh process."""
  absl_flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  cli.reuse_freed_memory()
  logits = _predictor(contender, checkpoint_path, batch_size)
  rng = np.random.default_rng(0)
  audio = rng.standard_normal((UTTERANCES, data_lib.AUDIO_DIM), dtype=np.float32)
  visual = rng.standard_normal((UTTERANCES, data_lib.VISUAL_DIM), dtype=np.float32)
  text = rng.standard_normal((UTTERANCES, STEPS, data_lib.TEXT_DIM), dtype=np.float32)
  one = (audio[:1], visual[:1], text[:1])
  for _ in range(10):  # compilation, thread pools
    logits(*one)
  times = []
  for _ in range(LATENCY_CALLS):
    start = time.perf_counter()
    logits(*one)
    times.append(time.perf_counter() - start)
  logits(audio, visual, text)
  rates = []
  for _ in range(5):
    start = time.perf_counter()
    logits(audio, visual, text)
    rates.append(UTTERANCES / (time.perf_counter() - start))
  # The peak is measured here, beside the throughput, so that both see the same machine load.
  return 1000 * statistics.median(times), max(rates), matmul_gflops()


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
  parser.add_argument('--json', metavar='OUT', help='also write the figures as JSON here')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.batch_size < 1:
    parser.error('--batch_size must be >= 1')
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
  print(f'{os.cpu_count()} CPUs; batch size {args.batch_size}, {UTTERANCES} utterances; the '
        'roofline from the matmul rate measured in each contender\'s process')
  print(f'{"preset":8} {"MFLOP/utt":>9} {"contender":14} {"batch-1 ms":>10} {"samples/s":>9} '
        f'{"GFLOP/s":>7} {"roofline/s":>10} {"of it":>5}')
  rows = []
  context = multiprocessing.get_context('spawn')
  with tempfile.TemporaryDirectory(prefix='bench-predict-') as directory:
    for emotion in emotions:
      path, config = _checkpoint(emotion, directory)
      flops = forward_flops(config)
      for contender in CONTENDERS:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
          latency, rate, peak = pool.submit(measure, contender, path, args.batch_size).result()
        roofline = peak * 1e9 / flops
        rows.append({'emotion': emotion, 'contender': contender, 'mflop_per_utterance': flops / 1e6,
                     'batch1_latency_ms': latency, 'samples_per_s': rate, 'matmul_gflops': peak,
                     'roofline_samples_per_s': roofline, 'of_roofline': rate / roofline,
                     'batch_size': args.batch_size})
        print(f'{emotion:8} {flops / 1e6:9.2f} {contender:14} {latency:10.2f} {rate:9.0f} '
              f'{peak:7.0f} {roofline:10.0f} {100 * rate / roofline:4.0f}%', flush=True)
  if args.json:
    files.write_json(args.json, rows)
  return 0


if __name__ == '__main__':
  sys.exit(main())
