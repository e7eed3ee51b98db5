"""What device setup applies and records: the fp32 matmul precision of each hardware profile, and
how batches are copied to a CUDA device (decided without one)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch.overrides import TorchFunctionMode

from lra.engine.device import environment, pins_memory, setup_device, to_device
from tests.conftest import compose_config

PROFILES = {"cpu": "highest", "gpu": "high", "h200": "high"}


@pytest.fixture
def matmul_precision_kept() -> Iterator[None]:
    """torch's fp32 matmul precision, a process-wide setting, put back after the test."""
    kept = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(kept)


@pytest.mark.parametrize("profile, precision", PROFILES.items())
def test_each_profile_names_its_matmul_precision(profile: str, precision: str):
    assert compose_config(f"hardware={profile}").hardware.matmul_precision.value == precision


def test_an_unknown_matmul_precision_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("hardware.matmul_precision=fast")
    assert "hardware.matmul_precision" in str(error.value.__cause__)
    assert "expected one of [highest, high, medium]" in str(error.value.__cause__)


@pytest.mark.parametrize("precision", ["high", "medium", "highest"])
def test_setup_applies_the_precision_and_the_record_names_it(precision: str, matmul_precision_kept):
    torch.set_float32_matmul_precision("medium" if precision != "medium" else "highest")  # not the one wanted
    device = setup_device(compose_config(f"hardware.matmul_precision={precision}").hardware)
    assert torch.get_float32_matmul_precision() == precision
    assert environment(device)["matmul_precision"] == precision


class CopiesSeen(TorchFunctionMode):
    """Records the keyword arguments of every Tensor.to call, and makes none: a CUDA copy without CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            self.calls.append(dict(kwargs or {}))
            return args[0]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device, asynchronous", [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_batches_are_pinned_and_copied_without_blocking_for_cuda_alone(device: str, asynchronous: bool):
    batch = (torch.zeros(2, 3, dtype=torch.long), None, torch.zeros(2, dtype=torch.long))  # mask None: no padding
    with CopiesSeen() as seen:
        moved = to_device(batch, torch.device(device))
    assert moved[1] is None and len(seen.calls) == 2
    assert all(call["non_blocking"] is asynchronous for call in seen.calls)
    assert pins_memory(torch.device(device)) is asynchronous
