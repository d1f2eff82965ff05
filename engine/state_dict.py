"""The 2018 LMF state_dict: key names, torch layouts, and the safetensors file that holds one.

Both backends save and load this exact key set, so a checkpoint from either one
loads into the other and into the original 2018 module.
"""

import json
import os
import pickle

import numpy as np
import safetensors
import safetensors.numpy

from engine.errors import CheckpointError
from engine.records import TRAIN_STATE
from flags import presets
from flags.config import Config
from flags.errors import ConfigError
from iemocap import data as data_lib
from iemocap import files

FORMAT = 'lmf-2018-state-dict'
METADATA_KEY = 'lmf'
DEFAULT_INPUT_DIMS = (data_lib.AUDIO_DIM, data_lib.VISUAL_DIM, data_lib.TEXT_DIM)
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked')
BARE = 'a bare 2018 state_dict'  # what metadata['backend'] says of one


def _subnet(prefix, in_dim, hidden):
  return [(f'{prefix}.norm.weight', (in_dim,)), (f'{prefix}.norm.bias', (in_dim,)),
          (f'{prefix}.norm.running_mean', (in_dim,)), (f'{prefix}.norm.running_var', (in_dim,)),
          (f'{prefix}.norm.num_batches_tracked', ()),
          (f'{prefix}.linear_1.weight', (hidden, in_dim)), (f'{prefix}.linear_1.bias', (hidden,)),
          (f'{prefix}.linear_2.weight', (hidden, hidden)), (f'{prefix}.linear_2.bias', (hidden,)),
          (f'{prefix}.linear_3.weight', (hidden, hidden)), (f'{prefix}.linear_3.bias', (hidden,))]


def shapes(config, input_dims=DEFAULT_INPUT_DIMS):
  """{key: shape} in the order the 2018 module's state_dict() lists them."""
  audio_in, video_in, text_in = input_dims
  out, rank, th, to = config.output_dim, config.rank, config.text_hidden, config.text_out
  entries = [
      ('audio_factor', (rank, config.audio_hidden + 1, out)),
      ('video_factor', (rank, config.video_hidden + 1, out)),
      ('text_factor', (rank, to + 1, out)),
      ('fusion_weights', (1, rank)),
      ('fusion_bias', (1, out)),
  ]
  entries += _subnet('audio_subnet', audio_in, config.audio_hidden)
  entries += _subnet('video_subnet', video_in, config.video_hidden)
  entries += [('text_subnet.rnn.weight_ih_l0', (4 * th, text_in)),
              ('text_subnet.rnn.weight_hh_l0', (4 * th, th)),
              ('text_subnet.rnn.bias_ih_l0', (4 * th,)),
              ('text_subnet.rnn.bias_hh_l0', (4 * th,)),
              ('text_subnet.linear_1.weight', (to, th)),
              ('text_subnet.linear_1.bias', (to,))]
  return dict(entries)


def is_buffer(key):
  return key.rsplit('.', 1)[-1] in BUFFER_SUFFIXES


def parameter_keys(config):
  return [k for k in shapes(config) if not is_buffer(k)]


def parameter_count(config, input_dims=DEFAULT_INPUT_DIMS):
  return int(sum(np.prod(s, dtype=np.int64) for k, s in shapes(config, input_dims).items()
                 if not is_buffer(k)))


def check_fits_in_memory(config, input_dims=DEFAULT_INPUT_DIMS, models=1):
  """Refuses models whose float32 weights, gradients and two Adam moments alone exceed this
  machine's memory: XLA aborts the process on a failed allocation, leaving nothing to catch."""
  need = 16 * parameter_count(config, input_dims) * models
  try:
    have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return  # the platform does not say
  if need > have:
    raise ConfigError(f'{models} model(s) of {parameter_count(config, input_dims):,} parameters '
                      f'need at least {need / 2**30:.1f} GiB to train, more than this machine\'s '
                      f'{have / 2**30:.1f} GiB: lower the hidden sizes or --rank')


def check(arrays, config, dims=None, what='state_dict'):
  """Fails naming the first missing, unexpected or mis-shaped key; `dims`: the model's input
  sizes (default: the arrays' own, for data of any feature sizes)."""
  expected = shapes(config, dims or input_dims(arrays))
  missing = [k for k in expected if k not in arrays]
  if missing:
    raise CheckpointError(f'{what} lacks {missing[0]}' + (
        f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
  extra = [k for k in arrays if k not in expected]
  if extra:
    raise CheckpointError(f'{what} has unexpected key {extra[0]}' + (
        f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''))
  for key, shape in expected.items():
    if tuple(np.shape(arrays[key])) != tuple(shape):
      raise CheckpointError(f'{what}: {key} has shape {tuple(np.shape(arrays[key]))}, '
                            f'expected {tuple(shape)} for this configuration')


def save(path, arrays, config, metadata=None):
  """Writes the state_dict (float32, num_batches_tracked int64) and the config, atomically."""
  check(arrays, config)
  tensors = {}
  for key in shapes(config):
    dtype = np.int64 if key.endswith('num_batches_tracked') else np.float32
    tensors[key] = np.array(arrays[key], dtype=dtype, order='C')  # keeps 0-d arrays 0-d
  # The workdir is where a run happened, not what it is: leaving it out keeps the same run's
  # checkpoint byte-identical wherever it was written (the data path stays: it is absolute, and
  # names the data the run learnt from). safetensors stores metadata in a hash
  # map of random order, so all of it travels as one sorted JSON string.
  record = {'format': FORMAT, 'config': {**config.to_dict(), 'workdir': ''}, **(metadata or {})}
  meta = {METADATA_KEY: json.dumps(record, sort_keys=True)}
  blob = safetensors.numpy.save(tensors, metadata=meta)
  files.atomic_write(path, lambda f: f.write(blob))


def load(path):
  """(arrays, metadata dict) from a checkpoint file; metadata['config'] is the run's config."""
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint {path} does not exist: pass a checkpoint.safetensors '
                          'written by lmf_jax or lmf_torch_npu')
  try:
    with safetensors.safe_open(path, framework='numpy') as f:
      metadata = dict(f.metadata() or {})
      arrays = {key: f.get_tensor(key) for key in f.keys()}
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f'{path} is not a readable safetensors checkpoint ({e})') from None
  if METADATA_KEY in metadata:
    try:
      metadata = json.loads(metadata[METADATA_KEY])
    except ValueError as e:
      raise CheckpointError(f'{path}: its metadata is not valid JSON ({e}): the file is damaged '
                            'or was not written by this project') from None
    if not isinstance(metadata, dict):
      raise CheckpointError(f'{path}: its metadata is not a record: the file was not written by '
                            'this project')
  return arrays, metadata


def input_dims(arrays):
  """(audio, visual, text) input sizes of a 2018 state_dict, read from its tensors' shapes."""
  return tuple(_dim(arrays, key, axis) for key, axis in (
      ('audio_subnet.norm.weight', 0), ('video_subnet.norm.weight', 0),
      ('text_subnet.rnn.weight_ih_l0', 1)))


def _dim(arrays, key, axis, what='state_dict'):
  if key not in arrays:
    raise CheckpointError(f'{what} lacks {key}: it is not an LMF state_dict')
  shape = np.shape(arrays[key])
  if len(shape) <= axis:
    raise CheckpointError(f'{what}: {key} has shape {tuple(shape)}: it is not an LMF state_dict')
  return int(shape[axis])


def bare_config(arrays, emotion, path):
  """The Config of a 2018 state_dict saved without this project's metadata.

  Every size LMF needs is read from the tensors' shapes; what only training uses (learning
  rates, dropouts, batch size) is `emotion`'s preset. The file does not record its emotion, so
  a two-class model's caller must name it; one output is a sentiment model, more are traits.
  """
  what = f'{path} (a bare 2018 state_dict)'
  outputs = _dim(arrays, 'fusion_bias', 1, what)
  if not emotion and outputs == 2:
    raise CheckpointError(f'{what} does not record which emotion it was trained for: pass '
                          f'--emotion={"|".join(data_lib.EMOTIONS)}')
  # One output: the 2018 train_mosi.py's sentiment; more: train_pom.py's traits.
  emotion = data_lib.normalize_emotion(emotion) if emotion else (
      'sentiment' if outputs == 1 else 'traits')
  if (data_lib.task_of(emotion) == 'classification') != (outputs == 2):
    raise CheckpointError(f'{what} has {outputs} output(s), which a {emotion} model cannot have '
                          '(an emotion: 2 classes; sentiment: 1; traits: one each)')
  sizes = {'audio_hidden': _dim(arrays, 'audio_subnet.linear_1.weight', 0, what),
           'video_hidden': _dim(arrays, 'video_subnet.linear_1.weight', 0, what),
           'text_hidden': _dim(arrays, 'text_subnet.rnn.weight_hh_l0', 1, what),
           'rank': _dim(arrays, 'audio_factor', 0, what), 'output_dim': outputs}
  text_out = _dim(arrays, 'text_subnet.linear_1.weight', 0, what)
  if text_out != sizes['text_hidden'] // 2:
    raise CheckpointError(f'{what} has text_out {text_out} with an LSTM of {sizes["text_hidden"]}: '
                          'the 2018 IEMOCAP code and this project use text_out = text_hidden // 2')
  try:
    return Config(emotion=emotion, **{**presets.preset(emotion), **sizes})
  except ConfigError as e:
    raise CheckpointError(f'{what}: {e}') from None


def with_buffer_counts(arrays):
  """`arrays` with a zero num_batches_tracked for each BatchNorm that lacks one: torch before
  0.4.1 saved none, and inference never reads it."""
  filled = dict(arrays)
  for key in arrays:
    if key.endswith('.norm.running_mean'):
      filled.setdefault(key.replace('running_mean', 'num_batches_tracked'), np.zeros((), np.int64))
  return filled


def _is_torch_file(path):
  """torch.save's zip format (torch >= 1.6), or its older pickle format (the 2018 code's torch)."""
  with open(path, 'rb') as f:
    head = f.read(2)
  return head == b'PK' or head[:1] == b'\x80'


def read_torch_state_dict(path):
  """{key: numpy array} of a torch.save'd state_dict, read with weights_only=True: tensors and
  containers only, no code run. torch is imported here alone: the engine needs it for this format."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(f'{path} is a torch file: reading it needs torch (pip install -e '
                          '.[torch]), or convert it to safetensors where torch is installed') from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    raise CheckpointError(f'{path} holds Python objects besides tensors, which torch.load('
                          'weights_only=True) refuses to run: save the model\'s state_dict() '
                          '(the 2018 code pickled whole modules with torch.save(model); load one '
                          'there and torch.save(model.state_dict(), path))') from None
  except (RuntimeError, EOFError, ValueError, OSError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f'{path} is not a readable torch file ({reason}): save the model\'s '
                          'state_dict() again') from None
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    raise CheckpointError(f'{path} holds a {type(loaded).__name__}, not a state_dict of tensors: '
                          'torch.save(model.state_dict(), path)')
  return {str(key): (value.float() if value.is_floating_point() else value).numpy()
          for key, value in loaded.items()}


def load_checkpoint(path, emotion=''):
  """(arrays, Config, metadata) of a checkpoint from either backend, or of a bare 2018 state_dict
  (a torch.save'd .pt, or safetensors without this project's metadata) of `emotion`."""
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint {path} does not exist: pass a checkpoint.safetensors '
                          'written by lmf_jax or lmf_torch_npu, a workdir, or a 2018 state_dict')
  if _is_torch_file(path):
    arrays, metadata = read_torch_state_dict(path), {}
  else:
    arrays, metadata = load(path)
  if metadata.get('format') == FORMAT or 'config' in metadata:  # this project's
    if 'config' not in metadata:
      raise CheckpointError(f'{path} has no saved configuration: it was not written by this '
                            'project')
    try:
      config = Config.from_dict(metadata['config'])
    except ConfigError as e:
      raise CheckpointError(f'{path} holds an invalid configuration: {e}') from None
  else:
    arrays = with_buffer_counts(arrays)
    config = bare_config(arrays, emotion, path)
    check(arrays, config, input_dims(arrays), what=f'{path} (a bare 2018 state_dict)')
    metadata = {'backend': BARE}
  for key, value in arrays.items():
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      raise CheckpointError(f'{path}: {key} holds NaN or inf weights: the model is unusable '
                            '(a diverged run); train again with a lower --lr/--factor_lr')
  return arrays, config, metadata


def write_train_state(workdir, arrays, progress):
  """train_state.safetensors: named arrays plus JSON progress, written atomically (each epoch)."""
  blob = safetensors.numpy.save({k: np.array(v, order='C') for k, v in arrays.items()},
                                metadata={'progress': json.dumps(progress, sort_keys=True)})
  files.atomic_write(os.path.join(workdir, TRAIN_STATE), lambda f: f.write(blob))


def read_train_state(workdir):
  """(arrays, progress, path) of write_train_state's file, for --resume."""
  path = os.path.join(workdir, TRAIN_STATE)
  if not os.path.exists(path):
    raise CheckpointError(f'--resume: {path} does not exist; the run in {workdir} never finished '
                          'an epoch: start it again without --resume')
  arrays, metadata = load(path)
  try:
    progress = json.loads(metadata['progress'])
  except (KeyError, ValueError):
    raise CheckpointError(f'{path} has no readable progress record: it is damaged or was not '
                          'written by this project; start the run again in another --workdir'
                          ) from None
  if not (isinstance(progress, dict) and isinstance(progress.get('epoch'), int)
          and (isinstance(progress.get('early_stopping'), dict)
               or isinstance(progress.get('members'), list))):
    raise CheckpointError(f'{path} has no readable progress record: start the run again in '
                          'another --workdir')
  return arrays, progress, path


def stored(arrays, name, shape, path):
  """arrays[name], checked to exist with `shape` (a train state written for this run)."""
  if name not in arrays:
    raise CheckpointError(f'{path} lacks {name}: it was written for another configuration')
  if arrays[name].shape != tuple(shape):
    raise CheckpointError(f'{path}: {name} has shape {arrays[name].shape}, expected '
                          f'{tuple(shape)}')
  return arrays[name]
