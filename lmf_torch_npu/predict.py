"""Predict with a checkpoint from either backend (or a bare 2018 state_dict):
`python -m lmf_torch_npu.predict --checkpoint=PATH --features=FILE --out=PRED.csv|.jsonl
[--split=test] [--emotion=E] [--overwrite] [--batch_size=512] [--device=auto]`. Runs in float32,
as evaluate does.

As a library: `Predictor(path)` loads once; `predict(covarep, facet, glove)`,
`predict_file(path)` and `logits(...)` then run any number of batches.
"""

import numpy as np
import torch
from absl import app
from absl import flags
from absl import logging

from engine import cli
from engine import prediction
from flags import prediction as prediction_flags
from lmf_torch_npu import checkpoint
from lmf_torch_npu import device as device_lib
from lmf_torch_npu import options


class Predictor(prediction.Predictor):
  """A checkpoint's eval-mode module on `device` (auto: NPU, else CUDA, else the CPU)."""

  def __init__(self, checkpoint_path, emotion='', batch_size=512, device='auto'):
    super().__init__(checkpoint_path, emotion)
    self.batch_size = batch_size
    choice = device_lib.select_device(device)
    logging.info('device %s (%s)', choice.name, choice.why)
    device_lib.activate(choice)
    self.device = choice.torch_device()
    self.model = checkpoint.from_state_dict(self.arrays, self.config).to(self.device).eval()

  def logits(self, audio, visual, text):
    outputs = []
    with torch.inference_mode():
      for start in range(0, audio.shape[0], self.batch_size):
        batch = [torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch_size])).to(
            self.device) for x in (audio, visual, text)]
        outputs.append(self.model(*batch))
      # The one host sync: every batch's logits are read back together.
      return torch.cat(outputs).float().cpu().numpy()


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  request = prediction.prediction_request(flags.FLAGS)
  predictor = Predictor(request.checkpoint, request.emotion, request.batch_size,
                        flags.FLAGS.device)
  print(prediction.format_summary(prediction.predict_to_file(predictor, request)))


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  prediction_flags.define_flags()
  options.define_device_flag()
  flags.adopt_module_key_flags(prediction_flags)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)
