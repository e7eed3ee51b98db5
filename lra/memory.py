"""The names of what a record's peak memory counts (its `memory_measure`), in one torch-free place:
lra/measure.py takes a device's measure from here, and the report (which never imports torch) the
words it shows for each.
"""

from __future__ import annotations

from typing import NamedTuple


class MemoryMeasure(NamedTuple):
    """One way of counting peak memory."""

    name: str  # the records' `memory_measure`
    device: str | None  # the device type whose peak_memory counts this way (None: not measured here)
    description: str  # what it counts, as a table title says it


KNOWN = (
    MemoryMeasure("cuda_max_allocated_minus_baseline", "cuda", "CUDA max allocated minus the baseline"),
    MemoryMeasure("live_tensor_bytes", "cpu", "live tensor bytes one step allocates"),
    MemoryMeasure("published", None, "as published"),  # the reference rows of a paper
)
MEASURES = {measure.name: measure.description for measure in KNOWN}  # memory_measure: its description
BY_DEVICE = {measure.device: measure.name for measure in KNOWN if measure.device}  # device type: memory_measure
