"""The CPU live-tensor-bytes tracker counts exactly what the measured block allocates: never the
tensors that existed before it (weights, optimizer state, the batch), their views or their
in-place updates. The timer warms up once and times on the thread count torch is set to."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lra.measure import LiveTensorBytes, median_seconds, peak_memory

CPU = torch.device("cpu")
FLOAT = 4  # bytes of a float32


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """The bytes of `tensors` together."""
    return sum(tensor.nbytes for tensor in tensors)


def test_cpu_peak_counts_live_tensors_only():
    x = torch.randn(256, 256)  # allocated before: not counted
    with peak_memory(CPU) as memory:
        a = x @ x  # 256 KiB
        b = a + 1  # 256 KiB, peak 512 KiB
        del a
        c = b * 2  # a was freed: still 512 KiB
        del b, c
    assert memory.bytes == 2 * 256 * 256 * 4
    assert memory.measure == "live_tensor_bytes"


def test_cpu_peak_scales_with_attention_scores():
    def attention_peak(n: int) -> int:
        q = torch.randn(1, 1, n, 16)
        with peak_memory(CPU) as memory:
            (q @ q.transpose(-1, -2)).softmax(-1) @ q
        return memory.bytes

    assert 3.5 < attention_peak(512) / attention_peak(256) < 4.5  # n^2 scores dominate


def test_a_forward_counts_its_output_not_the_weights():
    layer, x = nn.Linear(1024, 1024), torch.randn(8, 1024)  # a 4 MB weight (its transpose is a view)
    with peak_memory(CPU) as memory:
        out = layer(x)
    assert memory.bytes == out.nbytes == 8 * 1024 * FLOAT


def test_views_of_earlier_tensors_count_nothing_and_of_new_ones_once():
    x = torch.randn(64, 64)
    with peak_memory(CPU) as memory:
        views = [x.view(-1), x[1:], x[:, ::2], x.t(), x.transpose(0, 1), x.detach(), x.unsqueeze(0)]
    assert memory.bytes == 0 and len(views) == 7
    with LiveTensorBytes() as tracker:
        y = x * 2
        views = [y.view(-1), y[1:], y.t(), y.detach(), y.detach()[0]]
    assert tracker.live == tracker.peak == y.nbytes
    del y, views
    assert tracker.live == 0  # freed with its last view


def test_tensors_torch_tensor_makes_count_and_wrapped_arrays_do_not():
    array = np.ones(1000)  # 8000 bytes of numpy's
    with LiveTensorBytes() as tracker:
        made = torch.tensor([1.0, 2.0])  # lift_fresh hands back its own input, new
        copied = torch.tensor(array)  # a copy: torch's
        wrapped = [torch.from_numpy(array), torch.as_tensor(array)]  # numpy's memory
    assert tracker.live == made.nbytes + copied.nbytes == 2 * FLOAT + 8000
    assert all(np.shares_memory(array, tensor.numpy()) for tensor in wrapped)


def test_in_place_updates_of_earlier_tensors_count_nothing():
    x, y = torch.randn(64, 64), torch.randn(64, 64)
    with peak_memory(CPU) as memory:
        x.add_(1)
        x.mul_(y)
        x.copy_(y)
        x[0].zero_()
        torch.mul(y, 2, out=x)
    assert memory.bytes == 0


def test_resizing_recounts_a_storage():
    a = torch.ones(2000)
    empty = torch.empty(0)  # made before, grown inside: the growth is allocated inside
    with LiveTensorBytes() as tracker:
        t = torch.empty(0)
        t.resize_(1000)
        assert tracker.live == 1000 * FLOAT
        t.resize_(2000)
        assert tracker.live == 2000 * FLOAT
        u = torch.empty(0)
        torch.mul(a, 2, out=u)  # grows its out= tensor
        assert tracker.live == 4000 * FLOAT
        torch.mul(a, 2, out=empty)
        assert tracker.live == 6000 * FLOAT
        del t, u
        assert tracker.live == 2000 * FLOAT
    assert tracker.peak == 6000 * FLOAT


def test_sgd_counts_its_momentum_buffers_once():
    layer = nn.Linear(256, 256)
    layer(torch.randn(8, 256)).sum().backward()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, foreach=False)
    with peak_memory(CPU) as first:
        optimizer.step()  # a buffer per parameter; the update is in place
    with peak_memory(CPU) as second:
        optimizer.step()  # updates the buffers in place
    assert first.bytes == nbytes(layer.parameters()) == (256 * 256 + 256) * FLOAT
    assert second.bytes == 0


def test_adamw_counts_its_new_state_never_the_parameters():
    layer = nn.Linear(256, 256)
    layer(torch.randn(8, 256)).sum().backward()
    optimizer = torch.optim.AdamW(layer.parameters(), foreach=False)
    weights = nbytes(layer.parameters())
    temporaries = 2 * layer.weight.nbytes  # at most the update's denominator, sqrt then quotient
    with LiveTensorBytes() as first:
        optimizer.step()
    state = 2 * weights + 2 * FLOAT  # exp_avg and exp_avg_sq of each parameter, and its float step
    assert first.live == state == nbytes(t for s in optimizer.state.values() for t in s.values())
    assert state <= first.peak <= state + temporaries
    with LiveTensorBytes() as second:
        optimizer.step()
    assert second.live == 0 and 0 < second.peak <= temporaries


def test_a_training_step_counts_its_activations_and_gradients():
    batch, inputs, hidden, classes = 16, 32, 64, 4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    x, y = torch.randn(batch, inputs), torch.randint(classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # the momentum buffers exist before the measured step
    optimizer.zero_grad(set_to_none=True)
    gradients = nbytes(model.parameters())
    with LiveTensorBytes() as tracker:
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # frees the graph: the gradients and the loss are left
        after_backward = tracker.live
        optimizer.step()
    assert after_backward == tracker.live == gradients + loss.nbytes
    hidden_bytes, logit_bytes = batch * hidden * FLOAT, batch * classes * FLOAT
    # what the step makes, as if nothing were freed: the forward's hidden activations (before and
    # after the ReLU), logits, log-probabilities, loss and its weight total; the backward's
    # gradients of the loss, of the two hidden activations, of the logits and log-probabilities,
    # and of the parameters
    forward = 2 * hidden_bytes + 2 * logit_bytes + 2 * FLOAT
    backward = FLOAT + 2 * hidden_bytes + 2 * logit_bytes + gradients
    # the first layer's output and the ReLU's are alive at once
    assert max(2 * hidden_bytes, after_backward) < tracker.peak <= forward + backward


def test_the_cap_counts_only_what_the_block_allocates():
    layer, x = nn.Linear(1024, 1024), torch.randn(8, 1024)
    cap = 2**20  # 1 MB: below the 4 MB weight, above the 32 KB output
    with peak_memory(CPU, cap) as memory:
        layer(x)
    assert memory.bytes == 8 * 1024 * FLOAT
    with pytest.raises(torch.OutOfMemoryError), peak_memory(CPU, cap):
        torch.empty(cap // FLOAT + 1)


def test_median_seconds_leaves_the_warm_up_untimed_and_times_on_the_thread_count_torch_is_set_to():
    threads: list[int] = []  # torch's thread count during each call

    def call() -> None:  # slow once, as a first call that compiles or allocates is
        threads.append(torch.get_num_threads())
        time.sleep(0.3 if len(threads) == 1 else 0.02)

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the profile's, say; the Timer's own default is 1
    try:
        seconds = median_seconds(call, min_run_time=0.1)
    finally:
        torch.set_num_threads(before)
    assert 0.02 <= seconds < 0.05
    assert set(threads) == {2}
    assert len(threads) <= 7  # one warm-up call, then 0.1 s of timed calls: no warm-up before each block
