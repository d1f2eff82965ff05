"""lmf_jax/lstm.py: the hand-written backward pass against autodiff of the plain scan (the
definition), the choice between them, and forward-mode autodiff through the scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmf_jax import lstm
from lmf_jax import model as model_lib

IMPLEMENTATIONS = ('scan', 'fused')


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
    out, grads = vjp_of(jax.jit(lstm.fused_last_hidden), inputs, cotangent)
    ref_out, ref_grads = vjp_of(lstm.scan_last_hidden, inputs, cotangent)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13, atol=1e-14)
    for name, got, want in zip(('x', 'w_ih', 'w_hh', 'bias'), grads, ref_grads):
      assert got.shape == want.shape, name
      np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13, err_msg=name)


def test_float32_forward_and_gradients_stay_within_rounding_of_the_scan():
  inputs = random_inputs(0, 64, 20, 30, 16, jnp.float32)
  np.testing.assert_allclose(jax.jit(lstm.fused_last_hidden)(*inputs),
                             jax.jit(lstm.scan_last_hidden)(*inputs), rtol=1e-5, atol=1e-6)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * jnp.arange(16.0))
  got = jax.jit(jax.grad(loss(lstm.fused_last_hidden), argnums=(1, 2, 3)))(*inputs)
  want = jax.grad(loss(lstm.scan_last_hidden), argnums=(1, 2, 3))(*inputs)
  for g, w in zip(got, want):
    assert float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) < 1e-5


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('shared_inputs', [False, True])
def test_vmapped_over_models_equals_each_model_alone(shared_inputs, implementation):
  """The multi-seed trainer vmaps the model over members with their own batches, or with one
  batch shared by all (then only the weights carry the member axis)."""
  members = [random_inputs(seed, 4, 5, 3, 2, jnp.float32) for seed in range(3)]
  stacked = [jnp.stack(parts) for parts in zip(*members)]
  in_axes = (0, 0, 0, 0)
  if shared_inputs:
    members = [[members[0][0], *m[1:]] for m in members]
    stacked[0], in_axes = members[0][0], (None, 0, 0, 0)
  loss = lambda *a: jnp.sum(lstm.last_hidden(*a, implementation=implementation) ** 2)
  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  batched = jax.jit(jax.vmap(grad, in_axes=in_axes))(*stacked)
  for k, inputs in enumerate(members):
    for got, want in zip(batched, grad(*inputs)):
      np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_gradients_come_back_in_each_inputs_dtype(implementation):
  with jax.enable_x64(True):
    x, w_ih, w_hh, bias = random_inputs(3, 2, 3, 4, 2, jnp.float64)
    loss = lambda *a: jnp.sum(lstm.last_hidden(*a, implementation=implementation))
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(x.astype(jnp.float32), w_ih, w_hh, bias)
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float64, jnp.float64, jnp.float64]


def test_the_scans_jvp_equals_the_fused_vjp_in_float64():
  """<u, J v> from forward mode through the scan equals <J^T u, v> from the fused backward."""
  with jax.enable_x64(True):
    inputs = random_inputs(1, 5, 7, 6, 4, jnp.float64)
    tangents = random_inputs(2, 5, 7, 6, 4, jnp.float64)
    cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)))
    scan = lambda *a: lstm.last_hidden(*a, implementation='scan')
    out, out_tangent = jax.jit(lambda p, t: jax.jvp(scan, p, t))(inputs, tangents)
    _, grads = vjp_of(lstm.fused_last_hidden, inputs, cotangent)
    np.testing.assert_allclose(out, lstm.fused_last_hidden(*inputs), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jnp.vdot(cotangent, out_tangent),
                               sum(jnp.vdot(g, t) for g, t in zip(grads, tangents)), rtol=1e-11)


def small_model(lstm_impl):
  return model_lib.LMF(audio_hidden=4, video_hidden=3, text_hidden=6, text_out=3,
                       dropouts=(0.0, 0.0, 0.0), output_dim=2, rank=2, lstm_impl=lstm_impl)


@pytest.mark.slow
def test_jvp_through_the_model_with_the_scan_agrees_with_its_gradient():
  model = small_model('scan')
  variables = model_lib.init(model, jax.random.PRNGKey(0), (5, 4, 7), seq_len=6)
  rng = np.random.default_rng(4)
  audio, visual, text = (jnp.asarray(rng.normal(size=s), jnp.float32)
                         for s in ((3, 5), (3, 4), (3, 6, 7)))
  weights = jnp.array([1.0, -2.0])

  def loss(params):
    logits = model.apply({**variables, 'params': params}, audio, visual, text)
    return jnp.sum(logits * weights)

  params = variables['params']
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  direction = treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  _, derivative = jax.jvp(loss, (params,), (direction,))
  grads = jax.grad(loss)(params)
  via_grad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                 jax.tree_util.tree_leaves(direction)))
  np.testing.assert_allclose(derivative, via_grad, rtol=1e-4)


def test_auto_takes_the_fused_path_on_cpu_and_the_scan_elsewhere():
  assert lstm.chosen_implementation('scan') == 'scan'
  assert lstm.chosen_implementation('fused') == 'fused'
  on_cpu = jax.default_backend() == 'cpu'
  assert lstm.chosen_implementation() == ('fused' if on_cpu else 'scan')
  if on_cpu:  # the behaviour itself: forward mode refuses the custom VJP that 'auto' picked
    inputs = random_inputs(0, 2, 3, 4, 2, jnp.float32)
    with pytest.raises(TypeError, match='forward-mode'):
      jax.jvp(lstm.last_hidden, inputs, inputs)


def test_an_unknown_implementation_is_refused():
  with pytest.raises(ValueError, match="'cudnn'"):
    lstm.last_hidden(*random_inputs(0, 2, 3, 4, 2, jnp.float32), implementation='cudnn')
