"""Evaluate a checkpoint from either backend on one split:
`python -m lmf_torch_npu.evaluate --checkpoint=PATH [--emotion=E] [--data_path=...] [--split=test]
[--json] [--device=auto]`. Runs in float32, as the trainer's own evaluations do.
"""

import json

from absl import app
from absl import flags
from absl import logging

from flags import cli
from iemocap import protocol
from lmf_torch_npu import checkpoint
from lmf_torch_npu import device as device_lib
from lmf_torch_npu import train


def evaluate(checkpoint_path, emotion='', data_path='', split='test', device='auto'):
  """evaluate's report (F1, accuracy, mean loss, N) for a checkpoint on a split."""
  model, saved_config, metadata = checkpoint.load(checkpoint_path)
  config, dataset, is_synthetic = protocol.evaluation_data(saved_config, emotion, data_path)
  choice = device_lib.select_device(device)
  logging.info('device %s (%s)', choice.name, choice.why)
  device_lib.activate(choice)
  model = model.to(choice.torch_device())
  loss, logits = train.eval_step(model, train.to_device(dataset.split(split).arrays(),
                                                        choice.torch_device()))
  # The one host sync: the loss and logits are read back once.
  return protocol.evaluation_report(checkpoint_path, dataset, is_synthetic, split, loss.item(),
                                    logits.cpu().numpy(), metadata)


@cli.user_errors_exit
def main(argv):
  from flags import evaluation  # pylint: disable=import-outside-toplevel  (defines flags)
  from lmf_torch_npu import options  # pylint: disable=import-outside-toplevel
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  options.refuse_training_flags()
  report = evaluate(*evaluation.evaluation_request(), device=options.FLAGS.device)
  print(json.dumps(report, indent=2) if evaluation.FLAGS.json
        else protocol.format_evaluation(report))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  from flags import evaluation  # pylint: disable=ungrouped-imports
  from lmf_torch_npu import options
  flags.adopt_module_key_flags(evaluation)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)
