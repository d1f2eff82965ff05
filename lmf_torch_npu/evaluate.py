"""Evaluate a checkpoint from either backend on one split:
`python -m lmf_torch_npu.evaluate --checkpoint=PATH [--emotion=E] [--data_path=...] [--split=test]
[--json] [--device=auto]`. Runs in float32, as the trainer's own evaluations do.
"""

import json

from absl import app
from absl import flags
from absl import logging

from engine import cli
from engine import evaluation as engine_evaluation
from engine import state_dict
from flags import definitions
from flags import evaluation
from lmf_torch_npu import checkpoint
from lmf_torch_npu import device as device_lib
from lmf_torch_npu import options
from lmf_torch_npu import steps


def evaluate(checkpoint_path: str, emotion: str = '', data_path: str = '', split: str = 'test',
             device: str = 'auto') -> dict:
  """evaluate's report (F1, accuracy, mean loss, N) for a checkpoint on a split; a bare 2018
  state_dict needs its `emotion`."""
  arrays, saved_config, metadata = state_dict.load_checkpoint(checkpoint_path, emotion)
  config, dataset, is_synthetic = engine_evaluation.evaluation_data(
      saved_config, emotion, data_path, state_dict.input_dims(arrays))
  model = checkpoint.from_state_dict(arrays, saved_config)
  choice = device_lib.select_device(device)
  logging.info('device %s (%s)', choice.name, choice.why)
  device_lib.activate(choice)
  model = model.to(choice.torch_device())
  loss, logits = steps.eval_step(model, steps.to_device(dataset.split(split).arrays(),
                                                        choice.torch_device()))
  # The one host sync: the loss and logits are read back once.
  return engine_evaluation.evaluation_report(checkpoint_path, dataset, is_synthetic, split, loss.item(),
                                    logits.cpu().numpy(), metadata)


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  report = evaluate(*engine_evaluation.evaluation_request(flags.FLAGS), device=flags.FLAGS.device)
  print(json.dumps(report, indent=2) if flags.FLAGS.json
        else engine_evaluation.format_evaluation(report))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  evaluation.define_flags()
  options.define_device_flag()
  flags.adopt_module_key_flags(evaluation)
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)
