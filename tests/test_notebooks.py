"""The notebooks run top to bottom on a small sweep's records, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.report_fixtures import curve_runs, sample_runs

NOTEBOOKS = REPO / "notebooks"


def outputs(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """Every output of the executed notebook by MIME type, concatenated (images: their count)."""
    found: dict[str, str] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            for mime, data in output.get("data", {}).items():
                found[mime] = found.get(mime, "") + (data if mime.startswith("text/") else "image ")
            found["stream"] = found.get("stream", "") + output.get("text", "")
    return found


@pytest.mark.parametrize(
    "name, runs, expected",
    [
        ("leaderboard", sample_runs, {"text/html": ["linformer", "Transformer (LRA paper)", "41.00",
                                                    "Model-level techniques", "full-sdpa + int8"],
                                      "image/png": ["image"]}),
        ("scaling", sample_runs, {"text/html": ["from 1024", "local"], "image/png": ["image image"]}),
        ("curves", curve_runs, {"text/html": ["val ≥ 70.0%", "6.5 s, 25 steps (2 of 2 runs)", "[88.0, 91.7]"],
                                "image/png": ["image image image image"]}),
    ],
)
def test_notebook_runs_on_the_records_under_lra_runs(name: str, runs: Callable[[Path], Path], expected: dict,
                                                      tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LRA_RUNS", str(runs(tmp_path / "runs")))
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=120)
    client.execute(cwd=str(NOTEBOOKS))
    found = outputs(notebook)
    assert f"records under {tmp_path / 'runs'}" in found["stream"]
    for mime, needles in expected.items():
        assert all(needle in found.get(mime, "") for needle in needles), (mime, found.get(mime, "")[:500])


@pytest.mark.parametrize("name", ["leaderboard", "scaling", "curves"])
def test_notebooks_are_stored_without_outputs(name: str):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
