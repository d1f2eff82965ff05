"""torch.optim.Adam with LMF's two parameter groups, as the 2018 code built it.

Groups come from engine/param_groups.py, matched on the module's parameter
names (the 2018 ones), so both backends split the parameters by one rule.
Weight decay is Adam's own: *coupled* L2, added to the gradient before the
moments, for every parameter. Each group records its parameters' names, which
the train-state file uses to key the moments.
"""

import torch
from torch import torch_version
from absl import logging

from engine import param_groups

# torch's Adam defaults, which the 2018 code used; lmf_jax/optimizer.py states the same numbers.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def named_groups(model, config):
  """[{'name', 'names', 'params', 'lr'}] for the factor group and the rest, in that order."""
  named = dict(model.named_parameters())
  groups = param_groups.assign_groups(named)
  lrs = param_groups.group_lrs(config)
  result = []
  for group in param_groups.GROUPS:
    names = [name for name in named if groups[name] == group]
    result.append({'name': group, 'names': names, 'params': [named[n] for n in names],
                   'lr': lrs[group]})
  return result


def implementation(device_kind):
  """Adam's implementation keywords for a device, and why."""
  if device_kind == 'cuda':
    # One kernel for all parameters; it also takes GradScaler's scale on the device, so an AMP
    # step needs no host sync.
    return {'fused': True}, 'fused CUDA Adam'
  if device_kind == 'npu':
    # apex's (and torch_npu's) NpuFusedAdam optimises only the first param group, per the CANN
    # docs; LMF trains two groups at two learning rates, so the fused kernel would freeze one.
    return {}, ('torch.optim.Adam, not NpuFusedAdam: CANN documents that it optimises only '
                'the first of LMF\'s two param groups')
  if torch_version.TorchVersion(torch.__version__) >= '2.4':
    return {'fused': True}, 'fused CPU Adam'  # 4x faster than the for-loop at LMF's sizes
  return {}, 'torch.optim.Adam (for-loop)'


def make(config, model, device_kind):
  """The two-group Adam for `model`'s parameters on a device of `device_kind`."""
  keywords, why = implementation(device_kind)
  logging.info('optimiser: %s', why)
  return torch.optim.Adam(named_groups(model, config), betas=ADAM_BETAS, eps=ADAM_EPS,
                          weight_decay=config.weight_decay, **keywords)
