"""Low-rank Multimodal Fusion in Flax linen: the reference definition of the model.

Functional: `init` returns {'params', 'batch_stats'}; `apply(..., train=True,
mutable=['batch_stats'])` returns the updated running statistics. The tree
mirrors the 2018 module (lmf_jax/checkpoint.py holds the key table), and every
initialiser draws from the distribution torch uses for the same parameter.
"""

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmf_jax import lstm


def torch_uniform(bound):
  """U(-bound, bound): torch's default for Linear (bound 1/sqrt(fan_in)) and LSTM (1/sqrt(H))."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_xavier_normal(key, shape, dtype=jnp.float32):
  """torch.nn.init.xavier_normal_: an untruncated normal with torch's fans.

  For a (d0, d1, *rest) tensor torch takes fan_in = d1 * prod(rest) and
  fan_out = d0 * prod(rest); jax's glorot_normal is truncated and uses other axes.
  """
  receptive = math.prod(shape[2:])
  fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
  std = math.sqrt(2.0 / (fan_in + fan_out))
  return std * jax.random.normal(key, shape, dtype)


def torch_dense(features, fan_in):
  """nn.Dense initialised like torch.nn.Linear(fan_in, features)."""
  bound = 1.0 / math.sqrt(fan_in)
  return functools.partial(nn.Dense, features, kernel_init=torch_uniform(bound),
                           bias_init=torch_uniform(bound))


class BatchNorm1d(nn.Module):
  """torch.nn.BatchNorm1d semantics, which flax's BatchNorm does not have.

  Training normalises with the batch's biased variance but folds the unbiased
  variance into the running average, with torch's momentum (0.1 = weight of the
  new batch). Evaluation uses the running statistics.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train):
    features = x.shape[-1]
    weight = self.param('weight', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    running_mean = self.variable('batch_stats', 'running_mean', jnp.zeros, (features,))
    running_var = self.variable('batch_stats', 'running_var', jnp.ones, (features,))
    tracked = self.variable('batch_stats', 'num_batches_tracked', jnp.zeros, (), jnp.int32)
    if train:
      n = x.shape[0]
      mean = jnp.mean(x, axis=0)
      var = jnp.mean(jnp.square(x - mean), axis=0)
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = (1 - m) * running_var.value + m * var * (n / (n - 1))
        tracked.value = tracked.value + 1
    else:
      mean, var = running_mean.value, running_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * weight + bias


class Dropout(nn.Module):
  """torch.nn.Dropout's inverted dropout, with the rate given at call time.

  The rate may be a traced value, so a vmapped sweep can give each model its
  own rate in one compiled program (flax's Dropout needs a static rate).
  """

  @nn.compact
  def __call__(self, x, rate, train):
    if not train or (isinstance(rate, (int, float)) and rate == 0):
      return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class SubNet(nn.Module):
  """Audio/visual encoder: BatchNorm -> Dropout -> 3 x (Dense, ReLU)."""
  hidden: int

  @nn.compact
  def __call__(self, x, dropout, train):
    x = BatchNorm1d(name='norm')(x, train)
    x = Dropout(name='drop')(x, dropout, train)
    fan_in = x.shape[-1]
    for i in (1, 2, 3):
      x = nn.relu(torch_dense(self.hidden, fan_in)(name=f'linear_{i}')(x))
      fan_in = self.hidden
    return x


class LSTM(nn.Module):
  """One-layer unidirectional LSTM holding torch.nn.LSTM's parameters and layout.

  Gates are ordered i, f, g, o along the 4H axis. The computation is in
  lmf_jax/lstm.py: `implementation` 'scan' is its plain recurrence (both autodiff
  modes), 'fused' its hand-written backward pass (reverse mode only), 'auto' the
  fused one on CPU. Returns the final hidden state h_T.
  """
  hidden: int
  implementation: lstm.Implementation = 'auto'

  @nn.compact
  def __call__(self, x):  # x: (batch, time, features)
    h_size = self.hidden
    init = torch_uniform(1.0 / math.sqrt(h_size))
    w_ih = self.param('weight_ih_l0', init, (4 * h_size, x.shape[-1]))
    w_hh = self.param('weight_hh_l0', init, (4 * h_size, h_size))
    b_ih = self.param('bias_ih_l0', init, (4 * h_size,))
    b_hh = self.param('bias_hh_l0', init, (4 * h_size,))
    return lstm.last_hidden(x, w_ih, w_hh, b_ih + b_hh, implementation=self.implementation)


class TextSubNet(nn.Module):
  """Text encoder: LSTM over the GloVe sequence, dropout on h_T, Dense to text_out."""
  hidden: int
  out: int
  lstm_impl: lstm.Implementation = 'auto'  # lmf_jax/lstm.py: 'scan' for forward-mode autodiff

  @nn.compact
  def __call__(self, x, dropout, train):
    h = LSTM(self.hidden, self.lstm_impl, name='rnn')(x)
    h = Dropout(name='dropout')(h, dropout, train)
    return torch_dense(self.out, self.hidden)(name='linear_1')(h)


class LMF(nn.Module):
  """The 2018 LMF: modality encoders, then fusion with rank-`rank` modality factors.

  Each modality vector gets a constant 1 in front, is projected by its factor
  to (rank, batch, out), the three are multiplied elementwise, weighted over
  the rank axis and offset by a bias. Logits, no softmax. The 2018 post-fusion
  dropout is defined there but never applied, so it is absent here.
  """
  audio_hidden: int
  video_hidden: int
  text_hidden: int
  text_out: int
  dropouts: Sequence[float]  # audio, video, text
  output_dim: int
  rank: int
  lstm_impl: lstm.Implementation = 'auto'  # lmf_jax/lstm.py: 'scan' for forward-mode autodiff

  @nn.compact
  def __call__(self, audio, visual, text, train=False, dropouts=None):
    """`dropouts` (audio, video, text) overrides the module's rates; it may be traced."""
    rates = self.dropouts if dropouts is None else dropouts
    audio_h = SubNet(self.audio_hidden, name='audio_subnet')(audio, rates[0], train)
    video_h = SubNet(self.video_hidden, name='video_subnet')(visual, rates[1], train)
    text_h = TextSubNet(self.text_hidden, self.text_out, self.lstm_impl, name='text_subnet')(
        text, rates[2], train)
    fused = None
    for name, h in (('audio_factor', audio_h), ('video_factor', video_h),
                    ('text_factor', text_h)):
      factor = self.param(name, torch_xavier_normal, (self.rank, h.shape[-1] + 1, self.output_dim))
      with_one = jnp.concatenate([jnp.ones((h.shape[0], 1), h.dtype), h], axis=-1)
      projected = jnp.einsum('bd,rdo->rbo', with_one, factor)
      fused = projected if fused is None else fused * projected
    weights = self.param('fusion_weights', torch_xavier_normal, (1, self.rank))
    bias = self.param('fusion_bias', nn.initializers.zeros, (1, self.output_dim))
    return jnp.einsum('r,rbo->bo', weights[0], fused) + bias


def from_config(config):
  return LMF(audio_hidden=config.audio_hidden, video_hidden=config.video_hidden,
             text_hidden=config.text_hidden, text_out=config.text_out,
             dropouts=(config.audio_dropout, config.video_dropout, config.text_dropout),
             output_dim=config.output_dim, rank=config.rank)


def init(model, rng, input_dims, seq_len=20):
  """{'params', 'batch_stats'} for `model` from one PRNG key (one compiled program, not op by op)."""
  audio_in, video_in, text_in = input_dims

  @jax.jit
  def initialise(key):
    variables = model.init(key, jnp.zeros((2, audio_in)), jnp.zeros((2, video_in)),
                           jnp.zeros((2, seq_len, text_in)), train=False)
    return {'params': variables['params'], 'batch_stats': variables['batch_stats']}

  return initialise(rng)
