"""Evaluate a checkpoint from either backend on one split:
`python -m lmf_jax.evaluate --checkpoint=PATH [--emotion=E] [--data_path=...] [--split=test] [--json]`.
"""

import functools
import json

import jax
import numpy as np
from absl import app
from absl import flags

from engine import cli
from engine import evaluation as engine_evaluation
from engine import state_dict
from flags import definitions
from flags import evaluation
from lmf_jax import checkpoint
from lmf_jax import model as model_lib
from lmf_jax import steps


def evaluate(checkpoint_path: str, emotion: str = '', data_path: str = '',
             split: str = 'test') -> dict:
  """evaluate's report (F1, accuracy, mean loss, N) for a checkpoint on a split; a bare 2018
  state_dict needs its `emotion`."""
  arrays, saved_config, metadata = state_dict.load_checkpoint(checkpoint_path, emotion)
  config, dataset, is_synthetic = engine_evaluation.evaluation_data(
      saved_config, emotion, data_path, state_dict.input_dims(arrays))
  variables = checkpoint.from_state_dict(arrays, saved_config)
  model = model_lib.from_config(config)
  loss, logits = jax.jit(functools.partial(steps.eval_step, model=model))(
      variables, dataset.split(split).arrays())
  return engine_evaluation.evaluation_report(checkpoint_path, dataset, is_synthetic, split, float(loss),
                                    np.asarray(logits), metadata)


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  report = evaluate(*engine_evaluation.evaluation_request(flags.FLAGS))
  print(json.dumps(report, indent=2) if flags.FLAGS.json
        else engine_evaluation.format_evaluation(report))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  evaluation.define_flags()
  flags.adopt_module_key_flags(evaluation)
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  app.run(main, flags_parser=cli.parse_flags)
