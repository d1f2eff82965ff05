"""lmf_jax/lstm.py's hand-written backward pass against autodiff of the plain recurrence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmf_jax import lstm


def scan_lstm(x, w_ih, w_hh, bias):
  """torch.nn.LSTM's equations as a plain lax.scan, differentiated by JAX itself."""

  def step(carry, x_t):
    h, c = carry
    i, f, g, o = jnp.split(x_t @ w_ih.T + bias + h @ w_hh.T, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return (jax.nn.sigmoid(o) * jnp.tanh(c), c), None

  zeros = jnp.zeros((x.shape[0], w_hh.shape[1]), x.dtype)
  return jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x, 0, 1))[0][0]


def random_inputs(seed, batch, steps, features, hidden, dtype):
  rng = np.random.default_rng(seed)
  shapes = ((batch, steps, features), (4 * hidden, features), (4 * hidden, hidden), (4 * hidden,))
  return [jnp.asarray(rng.normal(scale=0.5, size=s), dtype) for s in shapes]


def vjp_of(fn, inputs, cotangent):
  out, pullback = jax.vjp(fn, *inputs)
  return out, pullback(cotangent)


@pytest.mark.parametrize('batch,steps,features,hidden', [(5, 7, 6, 4), (1, 3, 2, 3), (2, 1, 3, 2)])
def test_gradients_equal_autodiff_of_the_scan_in_float64(batch, steps, features, hidden):
  with jax.enable_x64(True):
    inputs = random_inputs(batch + steps, batch, steps, features, hidden, jnp.float64)
    cotangent = jnp.asarray(np.random.default_rng(9).normal(size=(batch, hidden)))
    out, grads = vjp_of(jax.jit(lstm.last_hidden), inputs, cotangent)
    ref_out, ref_grads = vjp_of(scan_lstm, inputs, cotangent)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13, atol=1e-14)
    for name, got, want in zip(('x', 'w_ih', 'w_hh', 'bias'), grads, ref_grads):
      assert got.shape == want.shape, name
      np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13, err_msg=name)


def test_float32_gradients_stay_within_rounding_of_autodiff():
  inputs = random_inputs(0, 64, 20, 30, 16, jnp.float32)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * jnp.arange(16.0))
  got = jax.jit(jax.grad(loss(lstm.last_hidden), argnums=(1, 2, 3)))(*inputs)
  want = jax.grad(loss(scan_lstm), argnums=(1, 2, 3))(*inputs)
  for g, w in zip(got, want):
    assert float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) < 1e-5


@pytest.mark.parametrize('shared_inputs', [False, True])
def test_vmapped_over_models_equals_each_model_alone(shared_inputs):
  """The multi-seed trainer vmaps the model over members with their own batches, or with one
  batch shared by all (then only the weights carry the member axis)."""
  members = [random_inputs(seed, 4, 5, 3, 2, jnp.float32) for seed in range(3)]
  stacked = [jnp.stack(parts) for parts in zip(*members)]
  in_axes = (0, 0, 0, 0)
  if shared_inputs:
    members = [[members[0][0], *m[1:]] for m in members]
    stacked[0], in_axes = members[0][0], (None, 0, 0, 0)
  grad = jax.grad(lambda *a: jnp.sum(lstm.last_hidden(*a) ** 2), argnums=(0, 1, 2, 3))
  batched = jax.jit(jax.vmap(grad, in_axes=in_axes))(*stacked)
  for k, inputs in enumerate(members):
    for got, want in zip(batched, grad(*inputs)):
      np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)


def test_gradients_come_back_in_each_inputs_dtype():
  with jax.enable_x64(True):
    x, w_ih, w_hh, bias = random_inputs(3, 2, 3, 4, 2, jnp.float64)
    grads = jax.grad(lambda *a: jnp.sum(lstm.last_hidden(*a)), argnums=(0, 1, 2, 3))(
        x.astype(jnp.float32), w_ih, w_hh, bias)
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float64, jnp.float64, jnp.float64]
