"""The speed-up benchmark: every variant measured, ratios against both full forms, the crossover."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.attention import list_attention
from runners.speedup import FUSED, PLAIN, crossover, summarise
from tests.conftest import REPO, run_cli


def test_crossover_is_the_length_from_which_a_variant_stays_faster_than_fused():
    seconds = {
        FUSED: [1.0, 2.0, 4.0, 8.0],
        PLAIN: [1.0, 3.0, 8.0, 20.0],
        "steady": [2.0, 1.5, 2.0, 2.0],  # faster from 1024 on
        "flaky": [0.5, 3.0, 3.0, 3.0],  # faster at 512, slower at 1024, faster from 2048 on
        "slow": [2.0, 4.0, 8.0, 16.0],
    }
    table = pd.DataFrame(seconds, index=[512, 1024, 2048, 4096]).T
    assert crossover(table).to_dict() == {
        FUSED: "none", PLAIN: "none", "steady": 1024, "flaky": 2048, "slow": "none"
    }
    frame = table.stack().rename("seconds").rename_axis(["model", "seq_len"]).reset_index()
    frame["peak_memory_mb"] = frame.seconds
    text = summarise(frame)
    assert text.index("Speed-up against plain") < text.index("Speed-up against fused") < text.index("Shortest")
    assert "| steady    | 0.500 |  2.000 |  4.000 | 10.000 |" in text  # plain over steady: 20 s / 2 s at 4096


def test_every_variant_is_measured_against_both_full_forms(tmp_path: Path):
    out = tmp_path / "speedup"
    result = run_cli("runners.speedup", "--lengths", "32", "64", "--min-run-time", "0.01", "--out", str(out),
                     "--extra", "model=performer model.attention.num_features=8", cwd=REPO)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out.with_suffix(".csv"))
    expected = {PLAIN, FUSED, "performer-softmax-random (model.attention.num_features=8)"}
    assert expected <= set(frame.model) and len(frame) == 2 * (len(list_attention()) + 2)
    assert (frame.seconds > 0).all() and (frame.peak_memory_mb > 0).all()
    assert "Shortest length from which each variant beats fused" in out.with_suffix(".md").read_text()


def test_an_unknown_model_fails_with_one_line_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "speedup"
    result = run_cli("runners.speedup", "--extra", "model=nope", "--out", str(out), cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m runners.speedup: error: model=nope: no such model; choose one of: "
        + ", ".join(sorted(path.stem for path in (REPO / "conf" / "model").glob("*.yaml")))
    ]
    assert not list(tmp_path.iterdir())
