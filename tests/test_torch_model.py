"""lmf_torch_npu's model, initialisation, optimiser groups and checkpoint file against their definitions."""

import numpy as np
import pytest
import torch

from engine import param_groups
from engine import protocol
from engine import state_dict
from engine.errors import CheckpointError
from flags import presets
from flags.config import Config
from lmf_torch_npu import checkpoint
from lmf_torch_npu import model as model_lib
from lmf_torch_npu import optimizer


def config_for(emotion, **overrides):
  return Config(emotion=emotion, **{**presets.PRESETS[emotion], **overrides})


def build(config, seed=0):
  torch.manual_seed(seed)
  return model_lib.from_config(config)


def inputs(batch, seed=0):
  g = torch.Generator().manual_seed(seed)
  return (torch.randn(batch, 74, generator=g), torch.randn(batch, 35, generator=g),
          torch.randn(batch, 20, 300, generator=g))


@pytest.mark.parametrize('emotion', presets.PRESETS)
def test_state_dict_keys_and_shapes_are_the_2018_set(emotion):
  config = config_for(emotion)
  module_state = build(config).state_dict()
  expected = state_dict.shapes(config)
  assert list(module_state) == list(expected)  # same keys, same order
  for key, shape in expected.items():
    assert tuple(module_state[key].shape) == tuple(shape), key
  assert module_state['audio_subnet.norm.num_batches_tracked'].dtype == torch.int64
  parameters = sum(p.numel() for p in build(config).parameters())
  assert parameters == state_dict.parameter_count(config)


def forward_2018(model, audio, visual, text):
  """The 2018 forward, `.squeeze()` calls included, on our module's weights."""
  audio_h = model.audio_subnet(audio)
  video_h = model.video_subnet(visual)
  _, final_states = model.text_subnet.rnn(text)
  text_h = model.text_subnet.linear_1(model.text_subnet.dropout(final_states[0].squeeze()))
  ones = torch.ones(audio_h.shape[0], 1)
  fusion = (torch.matmul(torch.cat((ones, audio_h), 1), model.audio_factor)
            * torch.matmul(torch.cat((ones, video_h), 1), model.video_factor)
            * torch.matmul(torch.cat((ones, text_h), 1), model.text_factor))
  output = torch.matmul(model.fusion_weights, fusion.permute(1, 0, 2)).squeeze() + model.fusion_bias
  return output.view(-1, model.fusion_bias.shape[1])


def test_forward_equals_the_2018_forward_and_works_at_batch_size_1():
  config = config_for('neutral')
  model = build(config, seed=4).eval()
  audio, visual, text = inputs(5)
  with torch.no_grad():
    ours = model(audio, visual, text)
    assert torch.equal(ours, forward_2018(model, audio, visual, text))
    one = model(audio[:1], visual[:1], text[:1])
  assert one.shape == (1, 2)
  torch.testing.assert_close(one, ours[:1], rtol=1e-5, atol=1e-6)


def test_initialisation_follows_the_2018_code():
  config = config_for('neutral', rank=16, text_hidden=256)
  models = [build(config, seed=s) for s in range(8)]
  factor = torch.stack([m.text_factor.detach() for m in models])  # (8, 16, 129, 2)
  fan_in, fan_out = 129 * 2, 16 * 2  # torch: dim 1 * receptive field, dim 0 * receptive field
  assert factor.std().item() == pytest.approx(np.sqrt(2.0 / (fan_in + fan_out)), rel=0.03)
  weights = torch.stack([m.fusion_weights.detach() for m in models])
  assert weights.std().item() == pytest.approx(np.sqrt(2.0 / 17), rel=0.15)
  assert all(torch.count_nonzero(m.fusion_bias) == 0 for m in models)
  w_ih = models[0].text_subnet.rnn.weight_ih_l0.detach()
  assert w_ih.abs().max().item() <= 1 / np.sqrt(256)
  norm = models[0].audio_subnet.norm
  assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
  assert build(config, seed=3).state_dict().keys() == models[0].state_dict().keys()
  assert not torch.equal(build(config, seed=3).audio_factor, build(config, seed=4).audio_factor)


def test_adam_groups_follow_the_shared_rule():
  config = config_for('sad', factor_lr=0.02, lr=0.005, weight_decay=0.01)
  tx = optimizer.make(config, build(config), 'cpu')
  factor, base = tx.param_groups
  assert factor['names'] == ['audio_factor', 'video_factor', 'text_factor']
  assert 'fusion_weights' in base['names'] and 'fusion_bias' in base['names']
  assert (factor['lr'], base['lr']) == (0.02, 0.005)
  assert factor['weight_decay'] == base['weight_decay'] == 0.01
  assert not factor['decoupled_weight_decay']  # coupled L2, as torch's Adam did in 2018
  names = factor['names'] + base['names']
  assert sorted(names) == sorted(state_dict.parameter_keys(config))
  assert param_groups.assign_groups(names) == {
      n: param_groups.FACTOR if n in factor['names'] else param_groups.BASE for n in names}


def test_factor_lr_moves_only_the_factors():
  config = config_for('sad', factor_lr=0.1, lr=1e-12, weight_decay=0.0)
  model = build(config)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  tx = optimizer.make(config, model, 'cpu')
  for p in model.parameters():
    p.grad = torch.ones_like(p)
  tx.step()
  for key, value in model.state_dict().items():
    moved = (value.float() - before[key].float()).abs().max().item() > 1e-3
    assert moved == key.endswith('_factor'), key


def test_fused_adam_on_cuda_and_never_npu_fused_adam_with_two_groups():
  cuda, _ = optimizer.implementation('cuda')
  npu, why = optimizer.implementation('npu')
  assert cuda == {'fused': True}
  assert 'fused' not in npu and 'NpuFusedAdam' in why and 'first' in why


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
  config = config_for('angry')
  model = build(config, seed=5)
  model.train()
  audio, visual, text = inputs(16, seed=1)
  model(audio, visual, text)  # moves the BatchNorm running statistics off their initial values
  model.eval()
  path = tmp_path / 'checkpoint.safetensors'
  protocol.save_checkpoint(path, checkpoint.to_state_dict(model.state_dict(), config), config,
                           'torch', epoch=7)
  loaded, loaded_config, metadata = checkpoint.load(path)
  assert loaded_config == Config.from_dict({**config.to_dict(), 'workdir': ''})
  assert metadata['backend'] == 'torch' and metadata['epoch'] == 7
  for key, value in model.state_dict().items():
    assert torch.equal(loaded.state_dict()[key], value), key
  with torch.no_grad():
    assert torch.equal(loaded(audio, visual, text), model(audio, visual, text))
  arrays, _ = state_dict.load(path)
  state_dict.check(arrays, config)


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path):
  config = config_for('angry')
  arrays = checkpoint.to_state_dict(build(config).state_dict(), config)
  del arrays['text_subnet.rnn.bias_hh_l0']
  with pytest.raises(CheckpointError, match='lacks text_subnet.rnn.bias_hh_l0'):
    checkpoint.from_state_dict(arrays, config)
  with pytest.raises(CheckpointError, match='does not exist'):
    checkpoint.load(tmp_path / 'missing.safetensors')
  (tmp_path / 'model.pt').write_bytes(b'\x80\x02}q\x00.')  # only torch.load(weights_only) reads it
  with pytest.raises(CheckpointError, match='not a readable torch file'):
    checkpoint.load(tmp_path / 'model.pt')
  (tmp_path / 'model.bin').write_bytes(b'{"not": "safetensors"}')
  with pytest.raises(CheckpointError, match='not a readable safetensors checkpoint'):
    checkpoint.load(tmp_path / 'model.bin')


def test_optimizer_state_round_trips_through_named_tensors():
  config = config_for('sad')
  model = build(config)
  tx = optimizer.make(config, model, 'cpu')
  for p in model.parameters():
    p.grad = torch.sin(p.detach() * 3)
  tx.step()
  tensors = checkpoint.optimizer_tensors(tx)
  assert {k: tuple(v.shape) for k, v in tensors.items()} == checkpoint.optimizer_shapes(tx)
  other = optimizer.make(config, build(config, seed=1), 'cpu')
  checkpoint.load_optimizer_tensors(other, {k: v.clone() for k, v in tensors.items()})
  for key, value in checkpoint.optimizer_tensors(other).items():
    assert torch.equal(value, tensors[key]), key


def test_adam_steps_equal_numpy_adam_with_coupled_l2():
  config = config_for('sad', weight_decay=0.01, factor_lr=0.02, lr=0.005)
  model = build(config)
  start = {name: p.detach().double().numpy().copy() for name, p in model.named_parameters()}
  grads = {name: np.sin(value * 7.0 + 1.0) for name, value in start.items()}
  tx = optimizer.make(config, model, 'cpu')
  for _ in range(3):  # a few steps, so bias correction and the moments matter
    for name, p in model.named_parameters():
      p.grad = torch.tensor(grads[name], dtype=torch.float32)
    tx.step()
  for name, p in model.named_parameters():
    lr = 0.02 if name.endswith('_factor') else 0.005
    value, m, v = start[name], 0.0, 0.0
    for t in (1, 2, 3):
      d = grads[name] + 0.01 * value  # coupled L2: the decay joins the gradient
      m = 0.9 * m + 0.1 * d
      v = 0.999 * v + 0.001 * d * d
      value = value - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(p.detach().numpy(), value, rtol=1e-5, atol=1e-6, err_msg=name)
