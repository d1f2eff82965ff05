"""Export the 2018 module as ONNX:
`python -m lmf_torch_npu.export --checkpoint=PATH --out=model.onnx [--opset=17] [--batch=dynamic|K]
[--dtype=float32|float16] [--features=FILE [--split=test]] [--emotion=E] [--overwrite]`.

The checkpoint may come from either backend (a file or a workdir) or be a bare
2018 state_dict. The graph takes `audio` (N, 74), `visual` (N, 35) and `text`
(N, 20, 300) in that order (sizes from the checkpoint, 20 GloVe steps as in the
2018 data) and returns `logits` (N, classes); N is dynamic unless --batch=K.
Before the file is written, ONNX Runtime (CPU) runs the graph against the torch
module, on --features or on seeded random utterances, and a float32 graph that
disagrees is refused.

torch's TorchScript exporter (dynamo=False) is used: it needs only onnx, while
the dynamo exporter also needs onnxscript. Opset 17 is the default; Ascend's
ATC takes opsets 11 to 15 (CANN 8.0) and maps ONNX LSTM only up to its opset-13
form (CommonLSTM, default activations, no `layout`), so --opset=11 is the graph
for the NPU. --dtype=float16 keeps BatchNorm in float32, as the NPU trainer's O2
does: running variances of raw COVAREP and FACET features can outgrow
float16's range, and the inputs are float16.
"""

import io
import json
import os
import sys
import warnings

import numpy as np
import torch
from absl import app
from absl import flags

try:
  import onnx
  import onnxruntime
except ImportError as e:
  _NEEDS = (f'lmf_torch_npu.export needs onnx and onnxruntime ({e.name} is missing): '
            'pip install -e .[export], or python3 run.py, which installs them')
  if __name__ == '__main__':
    print(f'error: {_NEEDS}', file=sys.stderr)
    sys.exit(2)
  raise ImportError(_NEEDS) from None

from engine import cli
from engine import prediction
from engine import state_dict
from flags.errors import ConfigError
from iemocap.errors import UserError
from iemocap import features as features_lib
from iemocap import files
from lmf_torch_npu import checkpoint
from lmf_torch_npu import options

INPUT_NAMES = ('audio', 'visual', 'text')
OUTPUT_NAME = 'logits'
TEXT_STEPS = 20  # GloVe steps per utterance in the 2018 data (the graph's fixed time axis)
OPSETS = range(11, 21)  # 11: ATC's lowest; 20: the TorchScript exporter's highest
DTYPES = {'float32': (torch.float32, np.float32), 'float16': (torch.float16, np.float16)}
# The export's own check, float32: max |ONNX Runtime - torch| logit; parity holds the graph to
# 1e-5 against lmf_jax on real utterances, this guards a broken exporter (~1e-6 when sound).
CHECK_TOLERANCE = 1e-4
CHECK_UTTERANCES = 64


class ExportError(UserError, RuntimeError):
  """The exported graph does not compute what the module computes."""


def module(arrays, config, dtype='float32'):
  """The eval-mode LMF of a 2018 state_dict on the CPU, in `dtype`; BatchNorm stays float32."""
  model = checkpoint.from_state_dict(arrays, config).to(DTYPES[dtype][0])
  for subnet in (model.audio_subnet, model.video_subnet):
    subnet.norm.float()  # SubNet runs BatchNorm in its own dtype and casts back (see model.py)
  return model.eval()


def export_onnx(arrays, config, opset=17, batch=None, dtype='float32'):
  """The serialised ONNX graph of a 2018 state_dict's LMF; `batch` None: a dynamic batch axis."""
  if opset not in OPSETS:
    raise ConfigError(f'--opset={opset}: choose {OPSETS[0]} to {OPSETS[-1]} (11 for Ascend\'s '
                      'ATC, 17 by default)')
  if dtype not in DTYPES:
    raise ConfigError(f'--dtype={dtype}: choose {" or ".join(DTYPES)}')
  model = module(arrays, config, dtype)
  example = tuple(torch.zeros(batch or 2, *shape, dtype=DTYPES[dtype][0])
                  for shape in input_shapes(state_dict.input_dims(arrays)))
  axes = None if batch else {name: {0: 'batch'} for name in INPUT_NAMES + (OUTPUT_NAME,)}
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    # The TorchScript exporter's deprecation notice, and tracer notes on nn.LSTM's own checks
    # (the graph is verified below and in parity instead).
    warnings.simplefilter('ignore')
    torch.onnx.export(model, example, buffer, dynamo=False, opset_version=opset,
                      input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                      dynamic_axes=axes, do_constant_folding=True)
  graph = onnx.load_from_string(buffer.getvalue())
  onnx.helper.set_model_props(graph, {'lmf': json.dumps({
      'emotion': config.emotion, 'classes': list(prediction.class_names(config)),
      'dtype': dtype, 'config': {**config.to_dict(), 'workdir': ''}}, sort_keys=True)})
  onnx.checker.check_model(graph)
  return graph.SerializeToString()


def input_shapes(input_dims):
  """Per-utterance shapes of the graph's inputs, in INPUT_NAMES order."""
  audio_in, visual_in, text_in = input_dims
  return (audio_in,), (visual_in,), (TEXT_STEPS, text_in)


def session(onnx_bytes):
  """An ONNX Runtime session on the CPU provider (what parity and the checks use)."""
  options_ = onnxruntime.SessionOptions()
  options_.log_severity_level = 3  # no notes on the console about optional graph rewrites
  return onnxruntime.InferenceSession(onnx_bytes, options_, providers=['CPUExecutionProvider'])


def run(ort_session, audio, visual, text, batch=None):
  """float32 logits of the graph, fed in its own input dtype; a graph of fixed `batch` runs
  each chunk of that size, the last one padded."""
  dtype = np.float16 if ort_session.get_inputs()[0].type == 'tensor(float16)' else np.float32
  step = batch or audio.shape[0]
  outputs = []
  for start in range(0, audio.shape[0], step):
    chunk = [np.asarray(x[start:start + step], dtype) for x in (audio, visual, text)]
    n = chunk[0].shape[0]
    chunk = [np.pad(x, [(0, step - n)] + [(0, 0)] * (x.ndim - 1)) for x in chunk]
    feeds = dict(zip(INPUT_NAMES, chunk))
    outputs.append(ort_session.run([OUTPUT_NAME], feeds)[0][:n])
  return np.concatenate(outputs).astype(np.float32)


def check_utterances(input_dims, features_path='', emotion='', split='test'):
  """(audio, visual, text, where they come from): a features file's, or seeded random ones."""
  if features_path:
    features = features_lib.read(features_path, input_dims, emotion, split)
    if features.text.shape[1] != TEXT_STEPS:
      raise ConfigError(f'{features.source} has {features.text.shape[1]} GloVe steps per '
                        f'utterance; the graph takes {TEXT_STEPS}')
    return features.audio, features.visual, features.text, features.source
  rng = np.random.default_rng(0)
  arrays = [rng.normal(size=(CHECK_UTTERANCES, *shape)).astype(np.float32)
            for shape in input_shapes(input_dims)]
  return (*arrays, f'{CHECK_UTTERANCES} seeded random utterances')


def check(onnx_bytes, arrays, config, utterances, batch=None):
  """(max |ONNX Runtime - torch float32| logit, share of predictions that agree) of a graph;
  the share is None for traits, which predict no class."""
  ours = run(session(onnx_bytes), *utterances, batch=batch)
  with torch.inference_mode():
    theirs = module(arrays, config)(*(torch.from_numpy(np.ascontiguousarray(x))
                                      for x in utterances)).numpy()
  labels = [prediction.Predictions(None, x, prediction.class_names(config), config.task).labels
            for x in (ours, theirs)]
  agree = None if labels[0] is None else float(np.mean(np.equal(*labels)))
  return float(np.max(np.abs(ours - theirs))), agree


def check_out(path, overwrite):
  if not path.lower().endswith('.onnx'):
    raise ConfigError(f'--out={path or "(empty)"}: name the .onnx file to write')
  if os.path.lexists(path) and not os.path.isdir(path) and not overwrite:
    raise ConfigError(f'--out={path} exists: choose another --out, or pass --overwrite to '
                      'replace it')
  cli.check_output_file(path, '--out')


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  values = flags.FLAGS
  if not values.checkpoint:
    raise ConfigError('--checkpoint is required: a checkpoint, a workdir or a 2018 state_dict')
  check_out(values.out, values.overwrite)
  batch = cli.parse_batch(values.batch)
  path, arrays, config, metadata = prediction.load(values.checkpoint, values.emotion)
  onnx_bytes = export_onnx(arrays, config, values.opset, batch, values.dtype)
  utterances = check_utterances(state_dict.input_dims(arrays), values.features, config.emotion,
                                values.split)
  diff, agree = check(onnx_bytes, arrays, config, utterances[:3], batch)
  if values.dtype == 'float32' and not diff <= CHECK_TOLERANCE:
    raise ExportError(f'the exported graph\'s logits differ from the torch module\'s by {diff:.3g} '
                      f'(> {CHECK_TOLERANCE}) on {utterances[3]}: nothing written; this torch '
                      f'{torch.__version__} / onnxruntime {onnxruntime.__version__} pair exports '
                      'LMF wrongly, please report it')
  files.atomic_write(values.out, lambda f: f.write(onnx_bytes))
  shape = f'batch {batch}' if batch else 'dynamic batch'
  print(f'exported {path} ({metadata.get("backend", "unknown")}, {config.emotion}) to '
        f'{os.path.abspath(values.out)}: opset {values.opset}, {values.dtype}, {shape}; '
        f'onnxruntime vs torch on {utterances[3]}: max |logit diff| {diff:.3g}'
        + ('' if agree is None else f', predictions agree on {100 * agree:.2f}%'))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  options.define_export_flags(OPSETS, tuple(DTYPES))
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)
