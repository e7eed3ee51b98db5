"""A report killed mid-write leaves only complete files: each lands whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
from matplotlib.figure import Figure

from lra.report import load_records, write_report
from tests.report_fixtures import sample_runs

PLOTS = ["plots/throughput_cpu_text_train.png", "plots/memory_cpu_text_train.png", "plots/bubble_cpu.png"]


def killed_on_call(real: Callable[..., Any], call: int) -> Callable[..., Any]:
    """`real` (Figure.savefig or DataFrame.to_csv), except that its `call`th call writes half of its
    output to its target, file or path, and raises: a process killed mid-write."""
    calls = 0

    def write(self: Any, target: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls < call:
            return real(self, target, **kwargs)
        if isinstance(self, Figure):
            buffer = io.BytesIO()
            real(self, buffer, **kwargs)
            output = buffer.getvalue()
        else:
            output = real(self, None, **kwargs)
        half = output[: len(output) // 2]
        if hasattr(target, "write"):
            target.write(half)
        else:
            (Path(target).write_bytes if isinstance(half, bytes) else Path(target).write_text)(half)
        raise OSError("killed mid-write")

    return write


@pytest.mark.parametrize("owner, method, call, written", [
    (Figure, "savefig", 2, PLOTS[:1]),  # the second plot
    (pd.DataFrame, "to_csv", 1, [*PLOTS, "leaderboard.md", "leaderboard.html"]),  # the last file
])
def test_a_report_killed_mid_write_leaves_only_complete_files(tmp_path: Path, monkeypatch, owner, method, call,
                                                               written):
    records = load_records(sample_runs(tmp_path / "runs"))
    complete = write_report(records, tmp_path / "complete", reference="lra_paper")
    monkeypatch.setattr(owner, method, killed_on_call(getattr(owner, method), call))
    killed = tmp_path / "killed"
    with pytest.raises(OSError, match="killed mid-write"):
        write_report(records, killed, reference="lra_paper")
    left = sorted(path.relative_to(killed).as_posix() for path in killed.rglob("*") if path.is_file())
    assert left == sorted(written)  # no half-written file, no temporary file
    for name in written:
        assert (killed / name).read_bytes() == complete[name].read_bytes()
