"""The one rule that splits LMF's parameters into its two Adam groups, for both backends.

The 2018 code gives the three modality factors their own learning rate
(`factor_lr`) and everything else `lr`; fusion_weights and fusion_bias belong to
the second group (an older version sliced the parameter list by position and
left them out of the optimiser altogether). Rules match 2018 state_dict names;
every parameter must match exactly one rule, or building the optimiser fails.
"""

import re

FACTOR = 'factor'
BASE = 'base'
GROUPS = (FACTOR, BASE)

GROUP_RULES = (
    (r'(audio|video|text)_factor', FACTOR),
    (r'fusion_(weights|bias)', BASE),
    (r'(audio|video)_subnet\.(norm|linear_[123])\.(weight|bias)', BASE),
    (r'text_subnet\.(rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l0|linear_1\.(weight|bias))', BASE),
)


class ParamGroupError(ValueError):
  """A parameter matched no group rule, or more than one."""


def assign_groups(names):
  """{name: group} for parameter names in 2018 state_dict spelling."""
  groups = {}
  for name in names:
    matches = [group for pattern, group in GROUP_RULES if re.fullmatch(pattern, name)]
    if len(matches) != 1:
      rules = [pattern for pattern, _ in GROUP_RULES if re.fullmatch(pattern, name)]
      raise ParamGroupError(f'parameter {name!r} matches {len(matches)} group rules '
                            f'{rules}: each must match exactly one (engine/param_groups.py)')
    groups[name] = matches[0]
  return groups


def group_lrs(config):
  """The learning rate of each group."""
  return {FACTOR: config.factor_lr, BASE: config.lr}
