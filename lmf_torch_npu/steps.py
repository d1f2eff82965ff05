"""The torch training and evaluation steps, and the data they read on the device.

lmf_torch_npu/train.py's run calls them; parity calls the same functions.
"""

import numpy as np
import torch
import torch.nn.functional as F

DROPOUT_STREAM = 1  # keeps dropout seeds apart from the batch order's (seed, epoch) stream


def at_least_float32(x):
  return x if x.dtype in (torch.float32, torch.float64) else x.float()


def loss_sum(outputs, labels):
  """The 2018 loss of the task the labels' dtype names, summed over the batch
  (size_average=False), never in fp16: cross-entropy of class ids; L1 of float targets, summed
  over every target too (train_pom.py back-propagates that sum; the engine reports it per
  target)."""
  outputs = at_least_float32(outputs)
  if not labels.dtype.is_floating_point:
    return F.cross_entropy(outputs, labels, reduction='sum')
  return F.l1_loss(outputs, labels.to(outputs.dtype), reduction='sum')


def train_step(model, tx, batch, amp):
  """One Adam step on one minibatch (amp: a device.MixedPrecision); returns the summed loss,
  still on the device."""
  tx.zero_grad(set_to_none=True)
  with amp.autocast():
    logits = model(batch['audio'], batch['visual'], batch['text'])
  loss = loss_sum(logits, batch['label'])
  amp.backward_and_step(loss, tx)
  return loss.detach()


def eval_step(model, batch):
  """(summed loss, logits) in eval mode: running BatchNorm statistics, no dropout, no autocast."""
  model.eval()
  with torch.no_grad():
    logits = at_least_float32(model(batch['audio'], batch['visual'], batch['text']))
  return loss_sum(logits, batch['label']), logits


def to_device(arrays, device):
  """A split's arrays as tensors on `device`, copied once for the whole run."""
  return {name: torch.from_numpy(np.ascontiguousarray(value)).to(device)
          for name, value in arrays.items()}


def gather(data, index):
  return {name: value.index_select(0, index) for name, value in data.items()}


def dropout_seed(seed, epoch):
  """The dropout seed of `epoch`, from (seed, epoch) alone: resuming needs no saved RNG state."""
  return int(np.random.SeedSequence([seed, epoch, DROPOUT_STREAM]).generate_state(1, np.uint64)[0])
