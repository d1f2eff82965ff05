"""lmf_jax's model, initialisation, optimiser groups and checkpoint mapping against their definitions."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import param_groups
from engine import state_dict
from engine.errors import CheckpointError
from flags import presets
from flags.config import Config
from lmf_jax import checkpoint
from lmf_jax import model as model_lib
from lmf_jax import optimizer

# The 2018 module's state_dict keys, in its order (model.py of Justin1904/Low-rank-Multimodal-Fusion).
KEYS_2018 = [
    'audio_factor', 'video_factor', 'text_factor', 'fusion_weights', 'fusion_bias',
    *[f'{m}_subnet.{p}' for m in ('audio', 'video') for p in (
        'norm.weight', 'norm.bias', 'norm.running_mean', 'norm.running_var',
        'norm.num_batches_tracked', 'linear_1.weight', 'linear_1.bias', 'linear_2.weight',
        'linear_2.bias', 'linear_3.weight', 'linear_3.bias')],
    'text_subnet.rnn.weight_ih_l0', 'text_subnet.rnn.weight_hh_l0', 'text_subnet.rnn.bias_ih_l0',
    'text_subnet.rnn.bias_hh_l0', 'text_subnet.linear_1.weight', 'text_subnet.linear_1.bias',
]
# Trainable parameters per preset, counted by hand from the 2018 shapes (pinned on purpose).
PARAMETER_COUNTS = {'angry': 97_684, 'sad': 230_200, 'happy': 230_271, 'neutral': 103_356}


def config_for(emotion, **overrides):
  return Config(emotion=emotion, **{**presets.PRESETS[emotion], **overrides})


@functools.lru_cache(maxsize=None)
def init_variables(config, seed=0):
  """The model's variables (jax arrays, never changed in place), made once per config and seed:
  each init traces and compiles a program of its own."""
  return model_lib.init(model_lib.from_config(config), jax.random.PRNGKey(seed), (74, 35, 300))


@pytest.mark.parametrize('emotion', presets.PRESETS)
def test_parameter_count_is_pinned_per_preset(emotion):
  config = config_for(emotion)
  variables = init_variables(config)
  count = sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
  assert count == PARAMETER_COUNTS[emotion] == state_dict.parameter_count(config)


def test_parameter_counts_by_hand():
  def count(a, v, t, r):
    subnet = lambda i, h: 2 * i + (i * h + h) + 2 * (h * h + h)
    text = 4 * t * 300 + 4 * t * t + 8 * t + (t * (t // 2) + t // 2)
    factors = r * (a + 1) * 2 + r * (v + 1) * 2 + r * (t // 2 + 1) * 2 + r + 2
    return subnet(74, a) + subnet(35, v) + text + factors
  for emotion, p in presets.PRESETS.items():
    assert count(p['audio_hidden'], p['video_hidden'], p['text_hidden'], p['rank']) == \
        PARAMETER_COUNTS[emotion]


@pytest.mark.parametrize('emotion', presets.PRESETS)
def test_checkpoint_keys_and_shapes_are_the_2018_set(emotion):
  config = config_for(emotion)
  arrays = checkpoint.to_state_dict(init_variables(config), config)
  assert list(arrays) == KEYS_2018
  p = presets.PRESETS[emotion]
  out, r, t = 2, p['rank'], p['text_hidden']
  assert arrays['audio_factor'].shape == (r, p['audio_hidden'] + 1, out)
  assert arrays['text_factor'].shape == (r, t // 2 + 1, out)
  assert arrays['fusion_weights'].shape == (1, r)
  assert arrays['audio_subnet.linear_1.weight'].shape == (p['audio_hidden'], 74)
  assert arrays['video_subnet.norm.running_var'].shape == (35,)
  assert arrays['text_subnet.rnn.weight_ih_l0'].shape == (4 * t, 300)
  assert arrays['text_subnet.rnn.weight_hh_l0'].shape == (4 * t, t)
  assert arrays['text_subnet.linear_1.weight'].shape == (t // 2, t)
  assert arrays['audio_subnet.norm.num_batches_tracked'].shape == ()


def test_state_dict_round_trip_is_exact_and_mismatches_name_the_key():
  config = config_for('angry')
  variables = init_variables(config, seed=3)
  arrays = checkpoint.to_state_dict(variables, config)
  again = checkpoint.from_state_dict(arrays, config)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  missing = dict(arrays)
  del missing['text_subnet.rnn.bias_hh_l0']
  with pytest.raises(CheckpointError, match='lacks text_subnet.rnn.bias_hh_l0'):
    checkpoint.from_state_dict(missing, config)
  extra = {**arrays, 'post_fusion_layer.weight': np.zeros(3)}
  with pytest.raises(CheckpointError, match='unexpected key post_fusion_layer.weight'):
    checkpoint.from_state_dict(extra, config)
  wrong = {**arrays, 'audio_factor': np.zeros((1, 9, 2))}
  with pytest.raises(CheckpointError, match=r'audio_factor has shape \(1, 9, 2\), expected \(8, 9, 2\)'):
    checkpoint.from_state_dict(wrong, config)


def test_batchnorm_matches_torch_formula_in_train_and_eval():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=(7, 5)).astype(np.float32)
  module = model_lib.BatchNorm1d()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)), train=False)
  params = {'weight': jnp.arange(1.0, 6.0), 'bias': jnp.full((5,), 0.5)}
  y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                            train=True, mutable=['batch_stats'])
  mean, biased, unbiased = x.mean(0), x.var(0), x.var(0, ddof=1)
  expected = (x - mean) / np.sqrt(biased + 1e-5) * np.arange(1.0, 6.0) + 0.5
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  stats = updates['batch_stats']
  np.testing.assert_allclose(stats['running_mean'], 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(stats['running_var'], 0.9 * 1.0 + 0.1 * unbiased, rtol=1e-6)
  assert int(stats['num_batches_tracked']) == 1
  y_eval = module.apply({'params': params, 'batch_stats': stats}, x, train=False)
  expected_eval = ((x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * unbiased + 1e-5)
                   * np.arange(1.0, 6.0) + 0.5)
  np.testing.assert_allclose(y_eval, expected_eval, rtol=1e-5, atol=1e-5)


def numpy_lstm(x, w_ih, w_hh, b_ih, b_hh):
  """torch.nn.LSTM's equations, one sample and one step at a time."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  hidden = w_hh.shape[1]
  finals = []
  for sample in x:
    h, c = np.zeros(hidden), np.zeros(hidden)
    for x_t in sample:
      gates = w_ih @ x_t + b_ih + w_hh @ h + b_hh
      i, f, g, o = np.split(gates, 4)
      c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
      h = sigmoid(o) * np.tanh(c)
    finals.append(h)
  return np.stack(finals)


def test_lstm_matches_a_plain_numpy_loop():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 6, 10)).astype(np.float32)
  module = model_lib.LSTM(hidden=4)
  variables = module.init(jax.random.PRNGKey(2), jnp.asarray(x))
  p = variables['params']
  expected = numpy_lstm(x.astype(np.float64), *(np.asarray(p[k], np.float64) for k in (
      'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0')))
  np.testing.assert_allclose(module.apply(variables, jnp.asarray(x)), expected, atol=1e-5)


def test_forward_matches_the_2018_fusion_written_out():
  config = config_for('neutral')
  variables = init_variables(config, seed=4)
  rng = np.random.default_rng(2)
  a, v = rng.normal(size=(5, 74)), rng.normal(size=(5, 35))
  t = rng.normal(size=(5, 20, 300))
  model = model_lib.from_config(config)
  logits = model.apply(variables, a, v, t, train=False)
  arrays = checkpoint.to_state_dict(variables, config)

  def subnet(prefix, x):
    x = ((x - arrays[f'{prefix}.norm.running_mean'])
         / np.sqrt(arrays[f'{prefix}.norm.running_var'] + 1e-5)
         * arrays[f'{prefix}.norm.weight'] + arrays[f'{prefix}.norm.bias'])
    for i in (1, 2, 3):
      x = np.maximum(x @ arrays[f'{prefix}.linear_{i}.weight'].T + arrays[f'{prefix}.linear_{i}.bias'], 0)
    return x

  h_t = numpy_lstm(t, *(arrays[f'text_subnet.rnn.{k}_l0'] for k in (
      'weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')))
  text_h = h_t @ arrays['text_subnet.linear_1.weight'].T + arrays['text_subnet.linear_1.bias']
  fused = 1.0
  for name, h in (('audio', subnet('audio_subnet', a)), ('video', subnet('video_subnet', v)),
                  ('text', text_h)):
    h1 = np.concatenate([np.ones((5, 1)), h], axis=1)
    fused = fused * np.matmul(h1, arrays[f'{name}_factor'])  # (rank, batch, out)
  expected = np.matmul(arrays['fusion_weights'], fused.transpose(1, 0, 2)).squeeze(1)
  expected = expected + arrays['fusion_bias']
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_initial_distributions_follow_torch():
  config = config_for('neutral', rank=16, text_hidden=256)
  leaves = [init_variables(config, seed=s)['params'] for s in range(8)]
  factor = np.stack([p['text_factor'] for p in leaves])  # (8, 16, 129, 2)
  fan_in, fan_out = 129 * 2, 16 * 2  # torch: dim 1 * receptive, dim 0 * receptive
  assert factor.std() == pytest.approx(np.sqrt(2.0 / (fan_in + fan_out)), rel=0.03)
  assert np.abs(factor).max() > 3 * factor.std()  # untruncated: jax's glorot_normal cuts at 2 sigma
  weights = np.stack([p['fusion_weights'] for p in leaves])
  assert weights.std() == pytest.approx(np.sqrt(2.0 / 17), rel=0.15)
  assert np.all(np.stack([p['fusion_bias'] for p in leaves]) == 0)
  w_ih = np.stack([p['text_subnet']['rnn']['weight_ih_l0'] for p in leaves])
  bound = 1 / np.sqrt(256)
  assert np.abs(w_ih).max() <= bound and np.abs(w_ih).max() > 0.99 * bound
  assert w_ih.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
  kernel = np.stack([p['audio_subnet']['linear_1']['kernel'] for p in leaves])
  assert np.abs(kernel).max() <= 1 / np.sqrt(74)
  bias = np.stack([p['audio_subnet']['linear_1']['bias'] for p in leaves])
  assert np.abs(bias).max() <= 1 / np.sqrt(74) and bias.std() > 0.3 / np.sqrt(74)
  norm = leaves[0]['audio_subnet']['norm']
  assert np.all(norm['weight'] == 1) and np.all(norm['bias'] == 0)


def test_every_parameter_in_exactly_one_adam_group():
  config = config_for('sad')
  params = init_variables(config)['params']
  labels = optimizer.param_labels(params, config)
  flat = {'/'.join(k.key for k in path): g
          for path, g in jax.tree_util.tree_flatten_with_path(labels)[0]}
  assert {k for k, g in flat.items() if g == 'factor'} == {'audio_factor', 'video_factor',
                                                            'text_factor'}
  assert flat['fusion_weights'] == flat['fusion_bias'] == 'base'
  assert len(flat) == len(state_dict.parameter_keys(config))


def test_a_parameter_outside_every_rule_or_in_two_fails(monkeypatch):
  config = config_for('sad')
  params = init_variables(config)['params']
  rules = [r for r in param_groups.GROUP_RULES if 'fusion' not in r[0]]
  monkeypatch.setattr(param_groups, 'GROUP_RULES', tuple(rules))
  with pytest.raises(param_groups.ParamGroupError, match="'fusion_weights' matches 0"):
    optimizer.make(config, params)
  monkeypatch.setattr(param_groups, 'GROUP_RULES', tuple(rules) + ((r'fusion_.*', 'base'),
                                                                    (r'.*_bias', 'factor')))
  with pytest.raises(param_groups.ParamGroupError, match="'fusion_bias' matches 2"):
    optimizer.make(config, params)


def test_one_step_equals_numpy_adam_with_coupled_l2():
  config = config_for('sad', weight_decay=0.01, factor_lr=0.02, lr=0.005)
  params = init_variables(config)['params']
  tx = optimizer.make(config, params)
  grads = jax.tree_util.tree_map(lambda p: jnp.sin(p * 7.0 + 1.0), params)
  state = tx.init(params)
  new_params = params
  for _ in range(3):  # a few steps, so bias correction and moment state matter
    updates, state = tx.update(grads, state, new_params)
    new_params = optax.apply_updates(new_params, updates)
  labels = optimizer.param_labels(params, config)

  def numpy_adam(p, g, group):
    lr = {'factor': 0.02, 'base': 0.005}[group]
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in (1, 2, 3):
      d = g + 0.01 * p  # torch Adam: weight decay joins the gradient
      m = 0.9 * m + 0.1 * d
      v = 0.999 * v + 0.001 * d * d
      p = p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return p

  expected = jax.tree_util.tree_map(numpy_adam, params, grads, labels)
  for path, got in jax.tree_util.tree_flatten_with_path(new_params)[0]:
    want = expected
    for key in path:
      want = want[key.key]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_factor_lr_moves_only_the_factors():
  config = config_for('sad', factor_lr=0.1, lr=1e-12, weight_decay=0.0)
  params = init_variables(config)['params']
  tx = optimizer.make(config, params)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name = jax.tree_util.keystr(path)
    big = float(jnp.abs(u).max()) > 1e-3
    assert big == bool(re.search(r"_factor'\]$", name)), name
