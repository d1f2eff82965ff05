"""Evaluate a checkpoint from either backend on one split:
`python -m lmf_jax.evaluate --checkpoint=PATH [--emotion=E] [--data_path=...] [--split=test] [--json]`.
"""

import functools
import json

import jax
import numpy as np
from absl import app
from absl import flags

from flags import cli
from iemocap import protocol
from lmf_jax import checkpoint
from lmf_jax import model as model_lib
from lmf_jax import train


def evaluate(checkpoint_path, emotion='', data_path='', split='test'):
  """evaluate's report (F1, accuracy, mean loss, N) for a checkpoint on a split."""
  variables, saved_config, metadata = checkpoint.load(checkpoint_path)
  config, dataset, is_synthetic = protocol.evaluation_data(saved_config, emotion, data_path)
  model = model_lib.from_config(config)
  loss, logits = jax.jit(functools.partial(train.eval_step, model=model))(
      variables, dataset.split(split).arrays())
  return protocol.evaluation_report(checkpoint_path, dataset, is_synthetic, split, float(loss),
                                    np.asarray(logits), metadata)


@cli.user_errors_exit
def main(argv):
  from flags import evaluation  # pylint: disable=import-outside-toplevel  (defines flags)
  from lmf_jax import options  # pylint: disable=import-outside-toplevel
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  options.refuse_training_flags()
  report = evaluate(*evaluation.evaluation_request())
  print(json.dumps(report, indent=2) if evaluation.FLAGS.json
        else protocol.format_evaluation(report))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  from flags import evaluation  # pylint: disable=ungrouped-imports
  from lmf_jax import options  # its training flags are refused by name, not unknown
  flags.adopt_module_key_flags(evaluation)  # `--help` lists them, not only this module's (none)
  app.run(main, flags_parser=cli.parse_flags)
