"""torch tensors <-> the 2018 state_dict (the engine writes the files; `load` reads one).

The module's own state_dict already carries the 2018 keys and layouts, so the
map is the identity; engine/state_dict.py checks the key set and shapes both
ways. Files are safetensors with JSON metadata: nothing is ever unpickled.
"""

import numpy as np
import torch

from engine import state_dict
from lmf_torch_npu import model as model_lib

ADAM_STATE = ('step', 'exp_avg', 'exp_avg_sq')


def to_numpy(tensor):
  """Host copy of a tensor; float32 for any float dtype (fp16/bf16 weights under apex O2)."""
  tensor = tensor.detach()
  if tensor.is_floating_point():
    tensor = tensor.float()
  return tensor.cpu().numpy()


def to_state_dict(tensors, config):
  """{2018 key: numpy array} from a module's state_dict (or a snapshot of one)."""
  arrays = {key: to_numpy(value) for key, value in tensors.items()}
  state_dict.check(arrays, config, what='torch state_dict')
  return arrays


def from_state_dict(arrays, config):
  """An LMF (on the CPU, eval mode) holding a 2018 state_dict from either backend; the input
  sizes are the state_dict's own."""
  dims = state_dict.input_dims(arrays)
  state_dict.check(arrays, config, dims)
  model = model_lib.from_config(config, dims)
  model.load_state_dict({key: torch.tensor(np.asarray(value)) for key, value in arrays.items()})
  return model.eval()


def load(path):
  """(model, config, metadata) from a checkpoint written by either backend."""
  arrays, config, metadata = state_dict.load_checkpoint(path)
  return from_state_dict(arrays, config), config, metadata


def optimizer_tensors(optimizer):
  """{'<2018 name>.<step|exp_avg|exp_avg_sq>': tensor} of an Adam from optimizer.make."""
  tensors = {}
  for group in optimizer.param_groups:
    for name, param in zip(group['names'], group['params']):
      for field, value in optimizer.state.get(param, {}).items():
        tensors[f'{name}.{field}'] = value
  return tensors


def optimizer_shapes(optimizer):
  """The shapes optimizer_tensors returns once Adam has taken a step."""
  return {f'{name}.{field}': () if field == 'step' else tuple(param.shape)
          for group in optimizer.param_groups
          for name, param in zip(group['names'], group['params']) for field in ADAM_STATE}


def load_optimizer_tensors(optimizer, tensors):
  """Puts optimizer_tensors' output back; load_state_dict moves each to its parameter's device."""
  saved = optimizer.state_dict()
  state, index = {}, 0
  for group in optimizer.param_groups:
    for name in group['names']:
      state[index] = {field: tensors[f'{name}.{field}'] for field in ADAM_STATE}
      index += 1
  optimizer.load_state_dict({'state': state, 'param_groups': saved['param_groups']})


def flatten_tensors(trees):
  """{name: {key: tensor}} as one {'name/key': numpy array} dict (a train state's arrays)."""
  return {f'{name}/{key}': to_numpy(value) for name, tree in trees.items()
          for key, value in tree.items()}


def unflatten_tensors(shapes, arrays, path):
  """{name: {key: CPU tensor}} from flatten_tensors' output read from `path`, checked against
  `shapes` ({name: {key: shape}})."""
  return {name: {key: torch.from_numpy(np.array(state_dict.stored(arrays, f'{name}/{key}', shape,
                                                                  path)))
                 for key, shape in expected.items()}
          for name, expected in shapes.items()}
