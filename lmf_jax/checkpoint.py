"""JAX variables <-> the 2018 state_dict (the engine writes the files; `load` reads one).

`KEY_TABLE` is the one explicit map between the two: (2018 key pattern, JAX
collection and path, transform). Dense kernels are stored (in, out) by flax and
(out, in) by torch, hence the transposes; everything else is stored as is.
"""

import re

import jax
import numpy as np

from engine import state_dict
from engine.errors import CheckpointError

IDENTITY = 'identity'
TRANSPOSE = 'transpose'

# (2018 key regex, JAX collection, JAX path template, transform); \1.. refer to the regex groups.
KEY_TABLE = (
    (r'(audio|video|text)_factor', 'params', (r'\1_factor',), IDENTITY),
    (r'fusion_(weights|bias)', 'params', (r'fusion_\1',), IDENTITY),
    (r'(audio|video)_subnet\.norm\.(weight|bias)', 'params', (r'\1_subnet', 'norm', r'\2'),
     IDENTITY),
    (r'(audio|video)_subnet\.norm\.(running_mean|running_var|num_batches_tracked)',
     'batch_stats', (r'\1_subnet', 'norm', r'\2'), IDENTITY),
    (r'(audio|video|text)_subnet\.(linear_[123])\.weight', 'params',
     (r'\1_subnet', r'\2', 'kernel'), TRANSPOSE),
    (r'(audio|video|text)_subnet\.(linear_[123])\.bias', 'params', (r'\1_subnet', r'\2', 'bias'),
     IDENTITY),
    (r'text_subnet\.rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l0', 'params',
     ('text_subnet', 'rnn', r'\1_l0'), IDENTITY),
)


def jax_location(key):
  """(collection, path tuple, transform) of a 2018 key; exactly one table row must match."""
  rows = [row for row in KEY_TABLE if re.fullmatch(row[0], key)]
  if len(rows) != 1:
    raise CheckpointError(f'2018 key {key} matches {len(rows)} rows of the JAX key table')
  pattern, collection, template, transform = rows[0]
  match = re.fullmatch(pattern, key)
  return collection, tuple(match.expand(part) for part in template), transform


def _get(tree, path, key):
  node = tree
  for part in path:
    if not isinstance(node, dict) or part not in node:
      raise CheckpointError(f'JAX variables lack {"/".join(path)} (2018 key {key})')
    node = node[part]
  return node


def _leaf_paths(tree, prefix=()):
  if isinstance(tree, dict):
    for name, child in tree.items():
      yield from _leaf_paths(child, prefix + (name,))
  else:
    yield prefix


def to_state_dict(variables, config):
  """{2018 key: numpy array in torch layout} from {'params', 'batch_stats'}."""
  variables = jax.device_get(variables)
  arrays, covered = {}, set()
  for key in state_dict.shapes(config):
    collection, path, transform = jax_location(key)
    value = np.asarray(_get(variables.get(collection, {}), path, key))
    arrays[key] = value.T if transform == TRANSPOSE else value
    covered.add((collection,) + path)
  for collection, tree in variables.items():
    for path in _leaf_paths(tree):
      if (collection,) + path not in covered:
        raise CheckpointError(f'JAX variable {collection}/{"/".join(path)} has no 2018 key')
  state_dict.check(arrays, config, what='JAX variables')
  return arrays


def from_state_dict(arrays, config, dtype=np.float32):
  """{'params', 'batch_stats'} from a 2018 state_dict (numpy or torch tensors' .numpy()); the
  input sizes are the state_dict's own."""
  state_dict.check(arrays, config, state_dict.input_dims(arrays))
  variables = {'params': {}, 'batch_stats': {}}
  for key in state_dict.shapes(config):
    collection, path, transform = jax_location(key)
    value = np.asarray(arrays[key])
    value = value.astype(np.int32) if key.endswith('num_batches_tracked') else value.astype(dtype)
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value.T if transform == TRANSPOSE else value
  return jax.tree_util.tree_map(jax.numpy.asarray, variables)


def load(path):
  """(variables, config, metadata) from a checkpoint written by either backend."""
  arrays, config, metadata = state_dict.load_checkpoint(path)
  return from_state_dict(arrays, config), config, metadata


def flatten_tree(tree, prefix):
  """{'prefix/key/path': numpy array} for every leaf of a pytree (optimiser states included)."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {f'{prefix}{jax.tree_util.keystr(path)}': np.asarray(leaf) for path, leaf in leaves}


def unflatten_tree(template, arrays, prefix, what):
  """The pytree shaped like `template` with leaves from `flatten_tree`'s output."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  restored = [jax.numpy.asarray(
      state_dict.stored(arrays, f'{prefix}{jax.tree_util.keystr(path)}', leaf.shape, what),
      dtype=leaf.dtype) for path, leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, restored)


def flatten_trees(trees):
  """{name: pytree} as one {'name/key/path': numpy array} dict (a train state's arrays)."""
  arrays = {}
  for name, tree in trees.items():
    arrays.update(flatten_tree(tree, name))
  return arrays


def unflatten_trees(templates, arrays, path):
  """{name: pytree shaped like templates[name]} from flatten_trees' output read from `path`."""
  return {name: unflatten_tree(template, arrays, name, path)
          for name, template in templates.items()}
