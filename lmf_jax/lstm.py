"""A one-layer LSTM's final hidden state: the plain recurrence, and a fast path for XLA's CPU.

`scan_last_hidden` is the definition: torch.nn.LSTM's equations (gates i, f, g,
o along the 4H axis) as a plain `lax.scan`, differentiated by JAX in either mode.

`fused_last_hidden` computes the same h_T with its backward pass written by
hand. Autodiff through `lax.scan` makes XLA's CPU backend run each reverse step
as about a dozen small kernels and accumulate the recurrent weight gradient one
step at a time. The pass here saves the gate activations and cell states, then
runs one fused kernel and one matmul per reverse step, and leaves both weight
gradients to two large matmuls after the loop. Together with
engine.cli.reuse_freed_memory it took the sad preset's train step from 58 to
38 ms on the 2-core development CPU (WORKSPACE.md has the breakdown). Reverse
mode only: jax.jvp and jacfwd refuse a custom_vjp function.

`last_hidden` chooses between them when traced: 'auto' takes the fused path on
the CPU backend, where it was measured faster, and the scan elsewhere (GPU and
TPU are unmeasured, so they run the definition).
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Implementation = Literal['auto', 'scan', 'fused']

# Gate index along the (batch, 4, H) view of the gates: 0 i, 1 f, 2 g, 3 o. A numpy constant,
# so importing the model does not start a JAX backend.
_GATE = np.arange(4)[None, :, None]
_TANH_SCALE = np.where(_GATE == 2, 1.0, 0.5).astype(np.float32)


def scan_last_hidden(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array,
                     bias: jax.Array) -> jax.Array:
  """h_T of a one-layer LSTM over x (batch, T, in) from zero state; bias = b_ih + b_hh.

  The reference: torch.nn.LSTM's cell, one lax.scan step per time step. The input
  projection does not depend on the state, so it is one matmul over all steps.
  """
  gates_x = jnp.swapaxes(x, 0, 1) @ w_ih.T + bias  # (T, batch, 4H)

  def step(carry, gates_x_t):
    h, c = carry
    i, f, g, o = jnp.split(gates_x_t + h @ w_hh.T, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), None

  zeros = jnp.zeros((x.shape[0], w_hh.shape[1]), gates_x.dtype)
  (h, _), _ = jax.lax.scan(step, (zeros, zeros), gates_x)
  return h


def chosen_implementation(implementation: Implementation = 'auto') -> str:
  """'scan' or 'fused': what `last_hidden` runs for `implementation` on the default backend."""
  if implementation == 'auto':
    return 'fused' if jax.default_backend() == 'cpu' else 'scan'
  if implementation not in ('scan', 'fused'):
    raise ValueError(f"LSTM implementation {implementation!r}: use 'auto', 'scan' or 'fused'")
  return implementation


def last_hidden(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array, bias: jax.Array, *,
                implementation: Implementation = 'auto') -> jax.Array:
  """h_T of a one-layer LSTM over x (batch, T, in) from zero state; bias = b_ih + b_hh.

  'scan' supports both autodiff modes; 'fused' reverse mode only; 'auto' is 'fused' on CPU.
  """
  if chosen_implementation(implementation) == 'fused':
    return fused_last_hidden(x, w_ih, w_hh, bias)
  return scan_last_hidden(x, w_ih, w_hh, bias)


def _activate(gates):
  """(batch, 4H) pre-activations -> (batch, 4, H): sigmoid on i, f, o; tanh on g.

  One tanh over all four gates, sigmoid(z) = (1 + tanh(z / 2)) / 2: XLA's CPU backend then runs
  one transcendental per element instead of a tanh and a sigmoid (exp and divide) on each.
  """
  by_gate = gates.reshape(gates.shape[0], 4, -1)
  squashed = jnp.tanh(by_gate * _TANH_SCALE.astype(by_gate.dtype))
  return jnp.where(_GATE == 2, squashed, 0.5 * squashed + 0.5)


def _recurrence(projected, w_hh, bias, keep):
  """Runs the cell over time-major `projected` (T, batch, 4H, without the bias) from zero state.

  The bias joins each step's sum rather than one pass over all T steps' projections before the
  loop: with the one-tanh activations and the Predictor's compile-time constant weights, the
  sad preset's inference at batch 512 on the 2-core CPU went from 8,000 to 12,000
  utterances/s (about 1.1x from this alone, weights passed as arguments). Returns h_T and,
  with `keep`, the activations (T, batch, 4, H) and cells (T, batch, H).
  """
  hidden = w_hh.shape[1]
  w_hh_t = w_hh.T

  def step(carry, gates_x):
    h, c = carry
    act = _activate(gates_x + h @ w_hh_t + bias)
    c = act[:, 1] * c + act[:, 0] * act[:, 2]
    h = act[:, 3] * jnp.tanh(c)
    return (h, c), ((act, c) if keep else None)

  zeros = jnp.zeros((projected.shape[1], hidden), jnp.result_type(projected, w_hh, bias))
  (h, _), kept = jax.lax.scan(step, (zeros, zeros), projected)
  return h, kept


def _project(x, w_ih):
  """Time-major inputs and their gate pre-activations: one (T*batch, in) x (in, 4H) matmul."""
  x_t = jnp.swapaxes(x, 0, 1)
  return x_t, x_t @ w_ih.T


@jax.custom_vjp
def fused_last_hidden(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array,
                      bias: jax.Array) -> jax.Array:
  """scan_last_hidden's h_T with the hand-written backward pass (module docstring)."""
  return _recurrence(_project(x, w_ih)[1], w_hh, bias, keep=False)[0]


def _last_hidden_fwd(x, w_ih, w_hh, bias):
  x_t, projected = _project(x, w_ih)
  h, (act, cells) = _recurrence(projected, w_hh, bias, keep=True)
  return h, (x_t, w_ih, w_hh, act, cells)


def _last_hidden_bwd(saved, dh_last):
  x_t, w_ih, w_hh, act, cells = saved
  steps, batch, hidden = cells.shape
  # What each reverse step needs, computed for all steps at once (one large fused kernel).
  cells_prev = jnp.concatenate([jnp.zeros_like(cells[:1]), cells[:-1]])
  tanh_c = jnp.tanh(cells)
  out_gate = act[:, :, 3]
  partner = jnp.stack([act[:, :, 2], cells_prev, act[:, :, 0], tanh_c], axis=2)
  slope = jnp.where(_GATE[None] == 2, 1 - act * act, act * (1 - act))
  gate_factor = partner * slope  # d(pre-activation) per unit of dc (i, f, g) or of dh (o)
  dc_per_dh = out_gate * (1 - tanh_c * tanh_c)

  def step(carry, xs):
    dh, dc = carry
    factor, dc_dh, forget = xs
    dc = dc + dh * dc_dh
    upstream = jnp.where(_GATE == 3, dh[:, None], dc[:, None])
    d_gates = (upstream * factor).reshape(batch, 4 * hidden)
    return (d_gates @ w_hh, dc * forget), d_gates

  _, d_gates = jax.lax.scan(step, (dh_last, jnp.zeros_like(dh_last)),
                            (gate_factor, dc_per_dh, act[:, :, 1]), reverse=True)
  d_gates = d_gates.reshape(steps * batch, 4 * hidden)
  h_prev = jnp.concatenate([jnp.zeros_like(cells[:1]), (out_gate * tanh_c)[:-1]])
  # The barriers stop XLA rewriting (X^T G)^T as G^T X, which its CPU backend runs slower.
  d_w_ih = jax.lax.optimization_barrier(x_t.reshape(steps * batch, -1).T @ d_gates).T
  d_w_hh = jax.lax.optimization_barrier(h_prev.reshape(steps * batch, hidden).T @ d_gates).T
  # The inputs' gradient, for completeness: XLA drops it when nothing asks for it.
  d_x = jnp.swapaxes((d_gates @ w_ih).reshape(steps, batch, -1), 0, 1)
  return (d_x.astype(x_t.dtype), d_w_ih.astype(w_ih.dtype), d_w_hh.astype(w_hh.dtype),
          d_gates.sum(0))


fused_last_hidden.defvjp(_last_hidden_fwd, _last_hidden_bwd)
