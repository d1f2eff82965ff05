"""The parity checks: lmf_jax and lmf_torch_npu on the same IEMOCAP batches.

Both backends start from one initialisation (torch's 2018 init, converted to
JAX through lmf_jax/checkpoint.py's key table) and see the same minibatches
(iemocap.batching with PARITY_SEED). Every comparison walks the 2018 keys and
reports the worst one, so a failure names the check, the emotion, the
parameter, the difference and the tolerance.

The torch side runs on the CPU unless a DeviceChoice says otherwise (parity's
--torch_device); JAX runs on its default device. On a GPU both are held to IEEE
float32 (no TF32: `gpu_precision`), so the CPU's bounds apply there too.
"""

import contextlib
import dataclasses
import functools
import math
import os
import statistics
import tempfile

import jax
import numpy as np
import torch
from absl import flags as absl_flags
from absl import logging

from engine import cli
from engine import datasets
from engine import protocol
from engine import records
from engine import state_dict
from engine import workdirs
from flags import definitions
from flags import presets
from flags.config import Config
from iemocap import batching
from iemocap import metrics
from lmf_jax import checkpoint as jax_checkpoint
from lmf_jax import evaluate as jax_evaluate
from lmf_jax import model as jax_model
from lmf_jax import steps as jax_steps
from lmf_jax import train as jax_train
from lmf_torch_npu import checkpoint as torch_checkpoint
from lmf_torch_npu import device as torch_device
from lmf_torch_npu import evaluate as torch_evaluate
from lmf_torch_npu import steps as torch_steps
from lmf_torch_npu import train as torch_train
from parity import tolerances

PARITY_SEED = 0
ADAM_STEPS = 50
DTYPES = ('float32', 'float64')
CPU = torch_device.DeviceChoice('cpu', None, 'parity runs on the CPU')
FP32 = torch_device.Precision('off', 'none', None, 'none')


@dataclasses.dataclass(frozen=True)
class Result:
  check: str
  emotion: str
  dtype: str
  max_diff: float
  tol: float
  where: str = ''  # the parameter or output with the largest difference

  @property
  def passed(self):
    return math.isfinite(self.max_diff) and self.max_diff <= self.tol

  def as_dict(self):
    finite = math.isfinite(self.max_diff)  # JSON has no inf: a mismatch of keys is null
    return {'check': self.check, 'emotion': self.emotion, 'dtype': self.dtype,
            'max_diff': self.max_diff if finite else None, 'tol': self.tol,
            'passed': self.passed, 'where': self.where}

  def __str__(self):
    verdict = 'ok' if self.passed else 'FAILED'
    return (f'{self.check} [{self.emotion}, {self.dtype}] {self.where}: max diff '
            f'{self.max_diff:.3g} {"<=" if self.passed else ">"} {self.tol:.3g} {verdict}')


def result(check, emotion, dtype, max_diff, where=''):
  return Result(check, emotion, dtype, float(max_diff), tolerances.tolerance(check, dtype), where)


def worst(a, b, relative=False):
  """(largest difference, its key) over the keys of two {name: array} dicts.

  Absolute: max |a - b|. Relative: max |a - b| / max |b| per key, so a
  parameter's error is measured against that parameter's own scale.
  """
  if set(a) != set(b):
    missing = sorted(set(a) ^ set(b))
    return math.inf, f'keys differ: {missing[:3]}'
  largest, where = -1.0, ''
  for key in a:
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    if x.shape != y.shape:
      return math.inf, f'{key}: shapes {x.shape} and {y.shape}'
    diff = float(np.max(np.abs(x - y))) if x.size else 0.0
    if relative:
      scale = float(np.max(np.abs(y))) if y.size else 0.0
      diff = diff / scale if scale > 0 else diff
    if not math.isfinite(diff):
      return math.inf, key
    if diff > largest:
      largest, where = diff, key
  return largest, where


def parity_config(emotion, data_path='', dropout=False, batch_size=None, **overrides):
  """The target's preset (its shapes); dropout off unless asked for, as the deterministic checks
  need; `batch_size` replaces the preset's (it changes no parameter shape, only the run time)."""
  values = {**presets.preset(emotion), 'seed': PARITY_SEED,
            'output_dim': definitions.target_outputs(emotion, data_path)}
  if batch_size:
    values['batch_size'] = batch_size
  if not dropout:
    values.update(audio_dropout=0.0, video_dropout=0.0, text_dropout=0.0)
  values.update(overrides)
  return Config(emotion=emotion, data_path=data_path, **values)


def headline(config):
  """The test figure the training checks compare: weighted F1, or a regression's MAE."""
  return 'f1' if config.task == 'classification' else 'mae'


def precision_scope(dtype):
  """float64 runs JAX with x64 enabled; float32 runs it as the trainers do."""
  return jax.enable_x64(True) if dtype == 'float64' else contextlib.nullcontext()


def cast_dataset(dataset, dtype):
  """The dataset with its features in `dtype` (labels untouched)."""
  if dtype == 'float32':
    return dataset
  cast = lambda split: dataclasses.replace(split, audio=split.audio.astype(dtype),
                                           visual=split.visual.astype(dtype),
                                           text=split.text.astype(dtype))
  return dataclasses.replace(dataset, train=cast(dataset.train), valid=cast(dataset.valid),
                             test=cast(dataset.test))


def train_subset(dataset, samples):
  """The dataset with only its first `samples` training utterances (all when 0)."""
  if not samples or samples >= dataset.train.n:
    return dataset
  part = slice(0, samples)
  train = dataclasses.replace(dataset.train, audio=dataset.train.audio[part],
                              visual=dataset.train.visual[part], text=dataset.train.text[part],
                              label=dataset.train.label[part])
  return dataclasses.replace(dataset, train=train)


def torch_choice(kind):
  """The DeviceChoice of parity's --torch_device (cpu | cuda | npu); a UserError of one line
  naming the option when that device is not here."""
  if kind == 'cpu':
    return CPU
  try:
    return torch_device.select_device(kind)
  except torch_device.DeviceError as e:
    why = str(e).partition(': ')[2] or str(e)  # select_device names the trainer's --device
    raise torch_device.DeviceError(f'--torch_device={kind}: {why}') from None


def gpu_precision(choice):
  """IEEE float32 matmuls on GPUs: TF32 (cuDNN's LSTM uses it by default, and XLA's default
  precision on GPUs) would put ~1e-3 relative errors into checks bounded at 1e-5. Process-wide
  settings, for parity's processes; nothing changes on the CPU."""
  if choice.kind == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  if jax.default_backend() == 'gpu':
    jax.config.update('jax_default_matmul_precision', 'highest')


class Pair:
  """One model in both frameworks, from one initialisation, in one dtype, for inputs of
  `input_dims`; the torch model on `choice`'s device."""

  def __init__(self, config, dtype, choice=CPU, input_dims=state_dict.DEFAULT_INPUT_DIMS):
    self.config, self.dtype, self.choice = config, dtype, choice
    self.device = choice.torch_device()
    torch.manual_seed(PARITY_SEED)
    initial = torch_checkpoint.to_state_dict(
        torch_checkpoint.model_lib.from_config(config, input_dims).state_dict(), config)
    self.torch = self.torch_model(initial)
    self.jax = jax_checkpoint.from_state_dict(initial, config, dtype=np.dtype(dtype))
    self.jax_model = jax_model.from_config(config)

  def torch_model(self, arrays):
    """A torch model of `arrays` (a state dict) in the pair's dtype, on its device."""
    return torch_checkpoint.from_state_dict(arrays, self.config).to(self.device,
                                                                    getattr(torch, self.dtype))

  def torch_arrays(self, model=None):
    return {k: v.detach().cpu().numpy() for k, v in (model or self.torch).state_dict().items()}

  def jax_arrays(self, variables=None):
    return jax_checkpoint.to_state_dict(variables or self.jax, self.config)

  def inputs(self, arrays):
    """The audio, visual and text tensors of a batch on the pair's device."""
    return [torch.from_numpy(arrays[k]).to(self.device) for k in ('audio', 'visual', 'text')]


def torch_batch(arrays, device=CPU.torch_device()):
  return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def check_conversion(pair, emotion):
  """torch -> JAX -> torch and JAX -> torch -> JAX return every tensor unchanged."""
  config = pair.config
  back = pair.torch_model(pair.jax_arrays())
  diff_t, where_t = worst(pair.torch_arrays(back), pair.torch_arrays())
  again = jax_checkpoint.from_state_dict(pair.torch_arrays(), config, dtype=np.dtype(pair.dtype))
  diff_j, where_j = worst(pair.jax_arrays(again), pair.jax_arrays())
  return result('conversion', emotion, pair.dtype, max(diff_t, diff_j),
                where_t if diff_t >= diff_j else where_j)


def check_eval_logits(pair, dataset, emotion):
  """Eval-mode logits on the whole test split (running BatchNorm statistics)."""
  test = dataset.test.arrays()
  _, jax_logits = jax.jit(functools.partial(jax_steps.eval_step, model=pair.jax_model))(
      pair.jax, test)
  pair.torch.eval()
  with torch.no_grad():
    torch_logits = pair.torch(*pair.inputs(test)).cpu().numpy()
  diff, _ = worst({'logits': np.asarray(jax_logits)}, {'logits': torch_logits})
  return result('eval_logits', emotion, pair.dtype, diff, 'logits'), np.asarray(
      jax_logits), torch_logits


def check_onnx(pair, dataset, emotion, jax_logits):
  """lmf_torch_npu.export's graph, at the default opset 17 and at ATC's opset 11, run by ONNX
  Runtime (CPU provider) on the whole test split against lmf_jax's eval-mode logits."""
  # onnx and onnxruntime are an optional extra; only this check needs them.
  from lmf_torch_npu import export  # pylint: disable=import-outside-toplevel
  test = dataset.test.arrays()
  results = []
  for opset in (17, 11):
    graph = export.export_onnx(pair.torch_arrays(), pair.config, opset)
    logits = export.run(export.session(graph), test['audio'], test['visual'], test['text'])
    diff, _ = worst({'logits': logits}, {'logits': np.asarray(jax_logits)})
    results.append(result('onnx_logits', emotion, pair.dtype, diff,
                          f'opset {opset} graph in ONNX Runtime vs JAX'))
  return results


def first_batch(dataset, config):
  index = batching.epoch_batches(dataset.train.n, config.batch_size, PARITY_SEED, 1)[0]
  return dataset.train.take(index)


def check_train_forward(pair, dataset, emotion):
  """Train-mode logits (batch statistics) and the BatchNorm running stats they update."""
  batch = first_batch(dataset, pair.config)
  forward = jax.jit(functools.partial(pair.jax_model.apply, train=True, mutable=['batch_stats']))
  jax_logits, updates = forward(pair.jax, batch['audio'], batch['visual'], batch['text'])
  model = pair.torch_model(pair.torch_arrays()).train()
  with torch.no_grad():
    torch_logits = model(*pair.inputs(batch))
  logits_diff, _ = worst({'logits': np.asarray(jax_logits)}, {'logits': torch_logits.cpu().numpy()})
  jax_stats = pair.jax_arrays({'params': pair.jax['params'], 'batch_stats': updates['batch_stats']})
  torch_stats = pair.torch_arrays(model)
  keys = [k for k in torch_stats if k.endswith(('running_mean', 'running_var'))]
  stats_diff, where = worst({k: jax_stats[k] for k in keys}, {k: torch_stats[k] for k in keys},
                            relative=True)
  return [result('train_logits', emotion, pair.dtype, logits_diff, 'logits'),
          result('running_stats', emotion, pair.dtype, stats_diff, where)]


def check_gradients(pair, dataset, emotion):
  """Gradient of the summed cross-entropy for every parameter, relative to its own scale."""
  batch = first_batch(dataset, pair.config)

  def loss_fn(params):
    logits, _ = pair.jax_model.apply({'params': params, 'batch_stats': pair.jax['batch_stats']},
                                     batch['audio'], batch['visual'], batch['text'], train=True,
                                     mutable=['batch_stats'])
    return jax_steps.loss_sum(logits, batch['label'])

  grads = jax.jit(jax.grad(loss_fn))(pair.jax['params'])
  jax_grads = pair.jax_arrays({'params': grads, 'batch_stats': pair.jax['batch_stats']})
  model = pair.torch_model(pair.torch_arrays()).train()
  tensors = torch_batch(batch, pair.device)
  loss = torch_steps.loss_sum(model(tensors['audio'], tensors['visual'], tensors['text']),
                                       tensors['label'])
  loss.backward()
  torch_grads = {name: p.grad.cpu().numpy() for name, p in model.named_parameters()}
  diff, where = worst({k: jax_grads[k] for k in torch_grads}, torch_grads, relative=True)
  return result('gradients', emotion, pair.dtype, diff, where)


def step_batches(dataset, config, steps):
  """The first `steps` minibatches of the shared epoch orders, epoch after epoch."""
  batches, epoch = [], 0
  while len(batches) < steps:
    epoch += 1
    batches += batching.epoch_batches(dataset.train.n, config.batch_size, PARITY_SEED, epoch)
  return batches[:steps]


def check_adam_steps(pair, dataset, emotion, steps=ADAM_STEPS):
  """Every parameter and running statistic after `steps` two-group Adam+L2 steps.

  Both sides take the trainers' own steps through their public interface (train_on).
  """
  config = pair.config
  jax_run = _jax_run(config, dataset, pair.jax)
  torch_run = _torch_run(config, dataset, pair.torch_arrays(), pair.choice)
  for index in step_batches(dataset, config, steps):
    jax_run.train_on(index)
    torch_run.train_on(torch.from_numpy(index).to(pair.device))
  ours, theirs = pair.jax_arrays(jax_run.variables()), pair.torch_arrays(torch_run.model)
  params = [k for k in theirs if not state_dict.is_buffer(k)]
  stats = [k for k in theirs if k.endswith(('running_mean', 'running_var'))]
  diff, where = worst({k: ours[k] for k in params}, {k: theirs[k] for k in params})
  stats_diff, stats_where = worst({k: ours[k] for k in stats}, {k: theirs[k] for k in stats},
                                  relative=True)
  name = 'adam_50_steps' if config.task == 'classification' else 'adam_50_steps_regression'
  return [result(name, emotion, pair.dtype, diff, where),
          result('adam_50_steps_stats', emotion, pair.dtype, stats_diff, stats_where)]


def check_same_weights_metrics(dataset, emotion, dtype, jax_logits, torch_logits):
  """Identical weights: identical predictions, so identical weighted F1 and accuracy; for
  regression every test figure within the outputs' own difference."""
  labels = dataset.test.label
  ours = metrics.test_figures(dataset.task, labels, jax_logits, dataset.corpus)
  theirs = metrics.test_figures(dataset.task, labels, torch_logits, dataset.corpus)
  if dataset.task == 'classification':
    flipped = int(np.sum(np.argmax(jax_logits, -1) != np.argmax(torch_logits, -1)))
    diff = max(abs(ours['f1'] - theirs['f1']), abs(ours['accuracy'] - theirs['accuracy']))
    return result('same_weights_metrics', emotion, dtype, diff,
                  f'{flipped} of {labels.shape[0]} predictions differ')
  keys = [k for k in metrics.FIGURES['regression'] if ours[k] is not None]
  diff, where = worst({k: ours[k] for k in keys}, {k: theirs[k] for k in keys})
  return result('same_weights_figures', emotion, dtype, diff, where)


def _jax_run(config, dataset, initial):
  return jax_train.JaxRun(config, dataset, variables=initial)


def _torch_run(config, dataset, initial_arrays, choice=CPU):
  return torch_train.TorchRun(config, dataset, choice, FP32,
                              state={k: torch.from_numpy(np.array(v))
                                     for k, v in initial_arrays.items()})


def train_both(pair, dataset, workdir, epochs):
  """Short runs of both trainers through the shared protocol from the pair's init.

  Returns ({backend: results record}, {backend: metrics history}).
  """
  config = dataclasses.replace(pair.config, epochs=epochs, patience=epochs)
  out, history = {}, {}
  for backend in ('jax', 'torch'):
    backend_config = dataclasses.replace(config, workdir=os.path.join(workdir, backend))
    backend_config, status = workdirs.prepare_workdir(backend_config, backend, {}, resume=False)
    if backend == 'jax':
      run = _jax_run(backend_config, dataset, pair.jax)
    else:
      run = _torch_run(backend_config, dataset, pair.torch_arrays(), pair.choice)
    out[backend] = protocol.train_and_evaluate(backend_config, run, dataset, True, status)
    history[backend] = records.read_metrics(backend_config.workdir)
  return out, history


def check_short_training(pair, dataset, emotion, workdir, epochs):
  """Same init, same batches, dropout off: the test figure (F1; MAE) and the loss curves agree."""
  out, history = train_both(pair, dataset, workdir, epochs)
  figure = headline(pair.config)
  figure_diff = abs(out['jax'][figure] - out['torch'][figure])
  curves_jax = {f'{k} epoch {r["epoch"]}': r[k] for r in history['jax']
                for k in ('train_loss', 'valid_loss')}
  curves_torch = {f'{k} epoch {r["epoch"]}': r[k] for r in history['torch']
                  for k in ('train_loss', 'valid_loss')}
  loss_diff, where = worst(curves_jax, curves_torch, relative=True)
  return [result(f'short_training_{figure}', emotion, pair.dtype, figure_diff,
                 f'jax {out["jax"][figure]:.4f}, torch {out["torch"][figure]:.4f}'),
          result('short_training_losses', emotion, pair.dtype, loss_diff, where)], out


def check_checkpoint_round_trip(dataset, emotion, dtype, workdir, trained, choice=CPU):
  """Each backend's checkpoint, evaluated by the other, gives the writer's test figure.

  `trained` is {backend: results record} of the runs that wrote them. In float32 the reader
  must match the trainer's own figure; a float64 run's checkpoint is stored in float32, so
  there the reader matches the writer's evaluate command. torch evaluates on `choice`'s device.
  F1 must be exact (same predictions); a regression's MAE agrees to float32 rounding.
  """
  data_path = dataset.path
  figure = 'f1' if dataset.task == 'classification' else 'mae'
  diffs = []
  for writer, reader in (('jax', 'torch'), ('torch', 'jax')):
    path = os.path.join(workdir, writer, records.CHECKPOINT)
    commands = {'jax': jax_evaluate.evaluate,
                'torch': functools.partial(torch_evaluate.evaluate, device=choice.name)}
    other = commands[reader](path, data_path=data_path)[figure]
    if dtype == 'float32':
      diffs.append((abs(trained[writer][figure] - other),
                    f'{writer} run\'s {figure} vs {reader} evaluate'))
    own = commands[writer](path, data_path=data_path)[figure]
    diffs.append((abs(own - other), f'{writer} checkpoint: {writer} vs {reader} evaluate'))
  diff, where = max(diffs)
  name = 'checkpoint_round_trip' if figure == 'f1' else 'checkpoint_round_trip_mae'
  return result(name, emotion, dtype, diff, where)


def amp_devices():
  """(DeviceChoice, dtype name) pairs to check autocast on: bf16 on the CPU, fp16 on a GPU or
  NPU when this machine has one."""
  found = [(CPU, 'bfloat16')]
  for kind in ('cuda', 'npu'):
    try:
      found.append((torch_device.select_device(kind), 'float16'))
    except torch_device.DeviceError:
      pass
  return found


def check_amp(pair, dataset, emotion):
  """torch autocast (bf16 on the CPU, fp16 on GPU/NPU) against the JAX float32 forward, relative
  to the logits' scale."""
  test = dataset.test.arrays()
  _, jax_logits = jax.jit(functools.partial(jax_steps.eval_step, model=pair.jax_model))(
      pair.jax, test)
  results = []
  for choice, dtype in amp_devices():
    torch_device.activate(choice)
    amp = torch_device.MixedPrecision(choice, torch_device.select_precision(choice, 'O1', 'auto',
                                                                            'native'))
    model = torch_checkpoint.from_state_dict(pair.torch_arrays(), pair.config).to(
        choice.torch_device()).eval()
    with torch.no_grad(), amp.autocast():
      logits = model(*(torch.from_numpy(test[k]).to(choice.torch_device())
                       for k in ('audio', 'visual', 'text')))
    diff, _ = worst({'logits': logits.float().cpu().numpy()}, {'logits': np.asarray(jax_logits)},
                    relative=True)
    results.append(result('amp_logits', emotion, dtype, diff,
                          f'logits ({dtype} autocast on {choice.name} vs JAX fp32)'))
  return results


def check_dropout_training(dataset, emotion, workdir, seeds, epochs, batch_size=None, choice=CPU):
  """Dropout on, each backend with its own RNG and init: the mean test figure (F1; MAE) over
  seeds agrees statistically. Both trainers run through the shared protocol on `dataset`."""
  values = {'jax': [], 'torch': []}
  figure = None
  for seed in range(seeds):
    config = parity_config(emotion, dataset.path, dropout=True, batch_size=batch_size, seed=seed,
                           epochs=epochs, patience=epochs)
    figure = headline(config)
    for backend in ('jax', 'torch'):
      backend_config = dataclasses.replace(
          config, workdir=os.path.join(workdir, f'dropout-{backend}-{seed}'))
      backend_config, status = workdirs.prepare_workdir(backend_config, backend, {}, resume=False)
      if backend == 'jax':
        run = jax_train.JaxRun(backend_config, dataset)
      else:
        run = torch_train.TorchRun(backend_config, dataset, choice, FP32)
      record = protocol.train_and_evaluate(backend_config, run, dataset, True, status)
      values[backend].append(record[figure])
  stderr = math.sqrt(sum(statistics.variance(v) / len(v) for v in values.values()))
  diff = abs(statistics.fmean(values['jax']) - statistics.fmean(values['torch']))
  check = f'dropout_training_{figure}'
  allowed = max(tolerances.tolerance(check, 'float32'), 3 * stderr)
  return Result(check, emotion, 'float32', diff, allowed,
                f'mean {figure} jax {statistics.fmean(values["jax"]):.4f}, torch '
                f'{statistics.fmean(values["torch"]):.4f} over {seeds} seeds')


def run_emotion(emotion, dataset, epochs=2, seeds=2, dtypes=DTYPES, batch_size=32,
                train_samples=640, workdir=None, choice=CPU):
  """Every check for one emotion preset; returns [Result].

  Evaluation checks use the whole test split; the training checks use the first
  `train_samples` training utterances in minibatches of `batch_size` (0: all, the preset's).
  The torch side runs on `choice`'s device.
  """
  results = []
  training = train_subset(dataset, train_samples)
  with contextlib.ExitStack() as stack:
    workdir = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix='parity-'))
    for dtype in dtypes:
      with precision_scope(dtype):
        config = parity_config(emotion, dataset.path, batch_size=batch_size)
        pair = Pair(config, dtype, choice, dataset.input_dims)
        data = cast_dataset(training, dtype)
        results.append(check_conversion(pair, emotion))
        eval_result, jax_logits, torch_logits = check_eval_logits(pair, data, emotion)
        results.append(eval_result)
        results += check_train_forward(pair, data, emotion)
        results.append(check_gradients(pair, data, emotion))
        results += check_adam_steps(pair, data, emotion)
        results.append(check_same_weights_metrics(data, emotion, dtype, jax_logits, torch_logits))
        run_dir = os.path.join(workdir, f'{emotion}-{dtype}')
        short, trained = check_short_training(pair, data, emotion, run_dir, epochs)
        results += short
        results.append(check_checkpoint_round_trip(dataset, emotion, dtype, run_dir, trained,
                                                   choice))
        if dtype == 'float32':
          results += check_amp(pair, data, emotion)
          results += check_onnx(pair, data, emotion, jax_logits)
    if seeds:
      results.append(check_dropout_training(training, emotion, os.path.join(workdir, emotion),
                                            seeds, epochs, batch_size, choice))
  return results



def check_emotion(emotion, options):
  """All checks of one emotion: ([Result], the data's log line, is_synthetic).

  The unit of `python -m parity`'s worker processes; `options` holds its command-line values.
  """
  absl_flags.FLAGS.mark_as_parsed()  # the libraries log through absl; parity has its own parser
  logging.set_verbosity(logging.WARNING)
  cli.reuse_freed_memory()
  jax_train.enable_compilation_cache()  # the checks rebuild the trainers' programs
  if options['jobs'] > 1:
    torch.set_num_threads(1)  # workers share the cores: one torch thread each, no oversubscription
  choice = torch_choice(options['torch_device'])
  torch_device.activate(choice)
  gpu_precision(choice)
  dataset, is_synthetic, note = datasets.open_dataset(parity_config(emotion, options['data_path']))
  results = run_emotion(emotion, dataset, options['epochs'], options['seeds'], options['dtypes'],
                        options['batch_size'], options['train_samples'], choice=choice)
  return results, note, is_synthetic
