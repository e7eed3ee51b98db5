"""Padding and the resumable data order."""

from __future__ import annotations

import torch

from tasks.batching import StepBatches, pad_batch


def test_pad_batch_masks_exactly_the_real_tokens():
    tokens, mask, labels = pad_batch([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 2)])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert labels.tolist() == [1, 2]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    batches = list(StepBatches(size=10, batch_size=3, seed=0, start=0, stop=6))
    epoch1, epoch2 = sum(batches[:3], []), sum(batches[3:], [])
    assert len(set(epoch1)) == 9 and len(set(epoch2)) == 9  # 3 batches of 3 distinct examples, 1 dropped
    assert epoch1 != epoch2


def test_resumed_order_equals_the_uninterrupted_one():
    full = list(StepBatches(size=50, batch_size=8, seed=3, start=0, stop=20))
    resumed = list(StepBatches(size=50, batch_size=8, seed=3, start=7, stop=20))
    assert resumed == full[7:]
    assert list(StepBatches(size=50, batch_size=8, seed=4, start=0, stop=20)) != full
