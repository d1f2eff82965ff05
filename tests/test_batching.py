"""Seeded minibatch order and the last-batch policy."""

import numpy as np
import pytest

from iemocap import batching


@pytest.mark.parametrize('n, batch_size', [(2717, 256), (2717, 64), (2717, 16), (9, 4), (5, 2),
                                           (3, 2), (10, 64)])
def test_every_sample_once_and_never_a_batch_of_one(n, batch_size):
  batches = batching.epoch_batches(n, batch_size, seed=0, epoch=1)
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))
  assert min(len(b) for b in batches) >= 2
  assert all(len(b) == batch_size for b in batches[:-1])


def test_a_trailing_single_sample_joins_the_batch_before():
  sizes = [len(b) for b in batching.epoch_batches(9, 4, seed=0, epoch=1)]
  assert sizes == [4, 5]
  sizes = [len(b) for b in batching.epoch_batches(10, 4, seed=0, epoch=1)]
  assert sizes == [4, 4, 2]


def test_order_depends_on_seed_and_epoch_only():
  a = batching.epoch_batches(100, 32, seed=7, epoch=3)
  b = batching.epoch_batches(100, 32, seed=7, epoch=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(batching.epoch_order(100, 7, 3), batching.epoch_order(100, 7, 4))
  assert not np.array_equal(batching.epoch_order(100, 7, 3), batching.epoch_order(100, 8, 3))


def test_one_sample_cannot_train():
  with pytest.raises(ValueError, match='BatchNorm needs at least 2'):
    batching.batch_bounds(1, 4)
