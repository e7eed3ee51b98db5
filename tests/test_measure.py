"""The CPU live-tensor-bytes tracker counts exactly what is allocated and freed."""

from __future__ import annotations

import torch

from lra.measure import peak_memory


def test_cpu_peak_counts_live_tensors_only():
    x = torch.randn(256, 256)  # allocated before: not counted
    with peak_memory(torch.device("cpu")) as memory:
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
        with peak_memory(torch.device("cpu")) as memory:
            (q @ q.transpose(-1, -2)).softmax(-1) @ q
        return memory.bytes

    assert 3.5 < attention_peak(512) / attention_peak(256) < 4.5  # n^2 scores dominate
