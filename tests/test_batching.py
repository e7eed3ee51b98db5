"""Padding and the resumable data order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.batching import Ragged, SequenceDataset, StepBatches, pad_batch


def test_pad_batch_masks_exactly_the_real_tokens():
    tokens, mask, labels = pad_batch([((torch.tensor([5, 6, 7]),), 1), ((torch.tensor([8]),), 2)])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert labels.tolist() == [1, 2]


def test_two_tower_batches_pad_both_documents_to_the_longest_of_either():
    tokens, mask, labels = pad_batch([((torch.tensor([1, 2]), torch.tensor([3])), 0),
                                      ((torch.tensor([4]), torch.tensor([5, 6, 7])), 1)])
    assert tokens.tolist() == [[[1, 2, 0], [3, 0, 0]], [[4, 0, 0], [5, 6, 7]]]
    assert mask.sum(-1).tolist() == [[2, 1], [1, 3]]
    assert labels.tolist() == [0, 1]


def test_ragged_storage_gives_back_each_sequence_as_int64():
    sequences = [np.array([3, 1, 4]), np.array([], dtype=int), np.array([255, 9])]
    ragged = Ragged.build(sequences)
    assert ragged.values.dtype == np.uint8 and len(ragged) == 3
    for index, expected in enumerate(sequences):
        assert ragged[index].dtype == torch.int64 and ragged[index].tolist() == expected.tolist()
    dataset = SequenceDataset((ragged, ragged), np.array([0, 1, 1]))
    (left, right), label = dataset[2]
    assert left.tolist() == right.tolist() == [255, 9] and label == 1
    with pytest.raises(ValueError):
        SequenceDataset((ragged,), np.array([0, 1]))


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
