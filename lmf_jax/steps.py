"""The JAX training and evaluation steps, pure functions of the state and a batch.

The single run (lmf_jax/train.py) jits them as they are; a population
(lmf_jax/population.py) vmaps them over a leading model axis.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def loss_sum(outputs, labels):
  """The 2018 loss of the task the labels' dtype names, summed over the batch
  (size_average=False): cross-entropy of class ids; L1 of float targets, summed over every
  target too (train_pom.py back-propagates that sum; the engine reports it per target)."""
  if jnp.issubdtype(labels.dtype, jnp.integer):
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).sum()
  return jnp.abs(outputs - labels.astype(outputs.dtype)).sum()


def train_step(state, batch, rng, *, model, tx, dropouts=None):
  """One Adam step on one minibatch; pure. Dropout keys are folded from the step count.

  `dropouts` overrides the model's (audio, video, text) rates, e.g. per model in a sweep.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['audio'], batch['visual'],
        batch['text'], train=True, dropouts=dropouts, rngs={'dropout': dropout_rng},
        mutable=['batch_stats'])
    return loss_sum(logits, batch['label']), updates['batch_stats']

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, {'loss_sum': loss}


def eval_step(variables, batch, *, model):
  """(summed loss, logits) in eval mode: running BatchNorm statistics, no dropout."""
  logits = model.apply(variables, batch['audio'], batch['visual'], batch['text'], train=False)
  return loss_sum(logits, batch['label']), logits


def gather(data, index):
  return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), data)


def train_step_on(state, data, index, rng, *, model, tx):
  """train_step on the minibatch `index` of device-resident `data` (no host copy per step)."""
  return train_step(state, gather(data, index), rng, model=model, tx=tx)


def create_state(variables, tx):
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))
