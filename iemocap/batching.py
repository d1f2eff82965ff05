"""Seeded minibatch order, the same for both backends given the same seed.

Last-batch policy: batches are `batch_size` long except the last, which keeps
the remainder, unless the remainder is a single sample: BatchNorm cannot
normalise one sample in training mode, so that sample joins the batch before
it. Every sample is seen once per epoch, as in the 2018 DataLoader loop.
"""

import numpy as np


def epoch_order(n, seed, epoch):
  """The permutation of `n` training samples for `epoch` (1-based) of a run seeded `seed`."""
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batch_bounds(n, batch_size):
  """(start, stop) of each minibatch of a pass over `n` samples."""
  if n < 2:
    raise ValueError(f'cannot train on {n} sample(s): BatchNorm needs at least 2 per batch')
  starts = list(range(0, n, batch_size))
  if n - starts[-1] == 1:
    starts.pop()
  stops = starts[1:] + [n]
  return list(zip(starts, stops))


def epoch_batches(n, batch_size, seed, epoch):
  """The index arrays of one epoch's minibatches."""
  order = epoch_order(n, seed, epoch)
  return [order[start:stop] for start, stop in batch_bounds(n, batch_size)]
