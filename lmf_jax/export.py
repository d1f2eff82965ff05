"""Export lmf_jax's eval-mode forward as serialized StableHLO (`jax.export`):
`python -m lmf_jax.export --checkpoint=PATH --out=model.jax_exported [--batch=dynamic|K]
[--platforms=cpu,cuda] [--emotion=E] [--overwrite]`.

The checkpoint may come from either backend (a file or a workdir) or be a bare
2018 state_dict. The artifact holds the program and the weights: inputs `audio`
(N, 74), `visual` (N, 35), `text` (N, T, 300) in float32 (sizes from the
checkpoint), output the logits (N, outputs; regression values for a regression
model). N is symbolic unless --batch=K, and T (the text steps) is symbolic
always, unlike the ONNX graph's fixed 20. `<out>.json` beside it records the
output names, input sizes and the JAX version that wrote it. Before anything is
written the deserialized artifact runs against lmf_jax's jitted forward.

Load it with `jax.export.deserialize(open(path, 'rb').read()).call(audio,
visual, text)`, or `load(path)` here. The compatibility caveat: JAX keeps a
serialized artifact runnable by releases up to 6 months newer than the one that
wrote it, and by slightly older ones only when they know its calling
convention; past that, export again from the checkpoint (which never expires).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from engine import cli
from engine import prediction
from engine import state_dict
from flags import evaluation
from flags.errors import ConfigError
from iemocap import files
from iemocap.errors import UserError
from lmf_jax import checkpoint
from lmf_jax import model as model_lib

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
# The export's own check: max |artifact - jitted forward| logit. Both are XLA programs of the same
# StableHLO, so they agree to rounding (0 on the CPU when measured); this guards a broken export.
CHECK_TOLERANCE = 1e-5
CHECK_UTTERANCES = 24
CHECK_STEPS = (20, 7)  # the 2018 text length, and another: T is symbolic


class ExportError(UserError, RuntimeError):
  """The deserialized artifact does not compute what lmf_jax computes."""


def forward(arrays, config):
  """The jitted eval-mode forward of a 2018 state_dict, its weights closed over."""
  variables = checkpoint.from_state_dict(arrays, config)
  return jax.jit(functools.partial(model_lib.from_config(config).apply, variables, train=False))


def export(arrays, config, batch=None, platforms=('cpu', 'cuda')):
  """The serialized jax.export artifact (bytes) of a 2018 state_dict's forward; `batch` None: a
  symbolic batch axis."""
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ConfigError(f'--platforms={",".join(platforms)}: choose from {",".join(PLATFORMS)}')
  audio_in, visual_in, text_in = state_dict.input_dims(arrays)
  n, steps = jax.export.symbolic_shape('n, t')
  n = batch or n
  specs = [jax.ShapeDtypeStruct(shape, jnp.float32)
           for shape in ((n, audio_in), (n, visual_in), (n, steps, text_in))]
  exported = jax.export.export(forward(arrays, config), platforms=tuple(platforms))(*specs)
  return bytes(exported.serialize())


def load(path):
  """A callable (audio, visual, text) -> logits of an exported artifact."""
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read())).call


def check(serialized, arrays, config, batch=None):
  """Max |artifact - jitted forward| logit on seeded random utterances, at two text lengths."""
  call = jax.export.deserialize(bytearray(serialized)).call
  reference = forward(arrays, config)
  rng = np.random.default_rng(0)
  audio_in, visual_in, text_in = state_dict.input_dims(arrays)
  n = batch or CHECK_UTTERANCES
  worst = 0.0
  for steps in CHECK_STEPS:
    inputs = [rng.normal(size=shape).astype(np.float32)
              for shape in ((n, audio_in), (n, visual_in), (n, steps, text_in))]
    worst = max(worst, float(np.max(np.abs(np.asarray(call(*inputs))
                                           - np.asarray(reference(*inputs))))))
  return worst


def check_out(path, overwrite):
  if not path:
    raise ConfigError('--out is required: the file to write the exported program to')
  for target in (path, path + '.json'):
    if os.path.lexists(target) and not os.path.isdir(target) and not overwrite:
      raise ConfigError(f'--out: {target} exists: choose another --out, or pass --overwrite to '
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
  platforms = tuple(p.strip() for p in values.platforms.split(',') if p.strip())
  path, arrays, config, metadata = prediction.load(values.checkpoint, values.emotion)
  serialized = export(arrays, config, batch, platforms)
  diff = check(serialized, arrays, config, batch)
  if not diff <= CHECK_TOLERANCE:
    raise ExportError(f'the exported program\'s logits differ from lmf_jax\'s by {diff:.3g} (> '
                      f'{CHECK_TOLERANCE}): nothing written; jax {jax.__version__} exports LMF '
                      'wrongly, please report it')
  record = {'outputs': list(prediction.class_names(config)), 'task': config.task,
            'inputs': dict(zip(('audio', 'visual', 'text'), state_dict.input_dims(arrays))),
            'batch': batch or 'dynamic', 'text_steps': 'dynamic', 'platforms': list(platforms),
            'jax_version': jax.__version__, 'config': {**config.to_dict(), 'workdir': ''}}
  files.atomic_write(values.out, lambda f: f.write(serialized))
  files.write_json(values.out + '.json', record)
  print(f'exported {path} ({metadata.get("backend", "unknown")}, {config.emotion}) to '
        f'{os.path.abspath(values.out)}: StableHLO for {",".join(platforms)}, '
        f'{f"batch {batch}" if batch else "dynamic batch"}, dynamic text steps; deserialized '
        f'against lmf_jax: max |logit diff| {diff:.3g}')


def define_flags():
  evaluation.define_checkpoint_flag()
  flags.DEFINE_string('out', '', 'The file to write the serialized program to '
                      '(e.g. model.jax_exported); <out>.json describes it.')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing --out (atomically).')
  flags.DEFINE_string('batch', 'dynamic', 'dynamic (a symbolic batch axis), or a fixed batch '
                      'size K.')
  flags.DEFINE_string('platforms', 'cpu,cuda', f'Comma-separated, from {",".join(PLATFORMS)}: '
                      'the program is lowered for each (no device of that kind is needed).')
  flags.DEFINE_string('emotion', '', 'Needed for a bare two-class 2018 state_dict; empty: the '
                      'checkpoint\'s own.')


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
