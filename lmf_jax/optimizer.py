"""torch.optim.Adam with LMF's two parameter groups, in optax.

Each group is Adam with *coupled* L2 weight decay, as torch's Adam does it:
the decay is added to the gradient before the moments (add_decayed_weights
before scale_by_adam), not applied to the weights afterwards (that is adamw,
a different optimiser). Groups come from engine/param_groups.py, matched on the
2018 key names, and are routed with optax.partition.
"""

import jax
import jax.numpy as jnp
import optax

from engine import param_groups
from engine import state_dict
from lmf_jax import checkpoint

ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8  # added after the square root, as torch does


def torch_adam(learning_rate, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS),
                     optax.scale(-learning_rate))


def param_labels(params, config):
  """A pytree like `params` holding each parameter's group name."""
  location_to_key = {}
  for key in state_dict.parameter_keys(config):
    collection, path, _ = checkpoint.jax_location(key)
    assert collection == 'params', key
    location_to_key[path] = key
  groups = param_groups.assign_groups(location_to_key.values())

  def label(path, _):
    names = tuple(p.key for p in path)
    if names not in location_to_key:
      raise param_groups.ParamGroupError(f'parameter {"/".join(names)} has no 2018 name, so no '
                                         'Adam group: add it to lmf_jax/checkpoint.py KEY_TABLE')
    return groups[location_to_key[names]]

  return jax.tree_util.tree_map_with_path(label, params)


def make(config, params):
  """The two-group Adam for `params`.

  Learning rate and weight decay live in the optimiser state (inject_hyperparams),
  so models trained side by side under vmap can each have their own.
  """
  lrs = param_groups.group_lrs(config)
  transforms = {group: optax.inject_hyperparams(torch_adam)(learning_rate=lrs[group],
                                                            weight_decay=config.weight_decay)
                for group in param_groups.GROUPS}
  return optax.partition(transforms, param_labels(params, config))


def set_hyperparams(opt_state, configs):
  """opt_state of stacked models (leading axis) with each model's lr and weight decay."""
  groups = {}
  for group, inner in opt_state.inner_states.items():
    lrs = jnp.asarray([param_groups.group_lrs(c)[group] for c in configs], jnp.float32)
    decays = jnp.asarray([c.weight_decay for c in configs], jnp.float32)
    hyper = inner.inner_state.hyperparams
    if hyper['learning_rate'].shape != lrs.shape:
      raise ValueError(f'{len(configs)} configurations for a state of {hyper["learning_rate"].shape}')
    groups[group] = inner._replace(inner_state=inner.inner_state._replace(
        hyperparams={**hyper, 'learning_rate': lrs, 'weight_decay': decays}))
  return opt_state._replace(inner_states=groups)
