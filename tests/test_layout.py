"""The house's shape: runners are thin entry points over the engine (none imports another, each
short), and the report reads records and draws tables and plots without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.report_fixtures import sample_runs

RUNNERS = sorted((REPO / "runners").glob("*.py"))
MOST_RUNNER_LINES = 135  # ~120: lra-data, argparse alone for three subcommands, is the longest


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_runner_imports_another_runner():
    assert len(RUNNERS) >= 5
    for path in RUNNERS:
        runners = {name for name in imported_modules(path) if name == "runners" or name.startswith("runners.")}
        assert not runners, f"{path.name} imports {runners}"


def test_arrows_point_one_way_from_the_runners():
    """lra, models and tasks never import a runner; the report never imports torch or the models."""
    for package in ("lra", "models", "tasks"):
        for path in (REPO / package).rglob("*.py"):
            assert not {name for name in imported_modules(path) if name.split(".")[0] == "runners"}, path
    for path in (REPO / "lra" / "report").rglob("*.py"):
        assert not {name for name in imported_modules(path) if name.split(".")[0] in ("torch", "models")}, path


def test_every_runner_is_a_thin_entry_point():
    for path in RUNNERS:
        lines = len(path.read_text().splitlines())
        assert lines <= MOST_RUNNER_LINES, f"{path.name}: {lines} lines"


def test_lra_report_writes_a_leaderboard_with_torch_unimportable(tmp_path: Path):
    runs, out = sample_runs(tmp_path / "runs"), tmp_path / "out"
    code = (  # None in sys.modules: `import torch` raises ImportError, here and in every module imported
        "import sys; sys.modules['torch'] = None\n"
        f"sys.argv = ['lra-report', 'runs={runs}', 'out={out}']\n"
        "import lra.report, lra.sweep, runners.report\n"
        "runners.report.cli()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "full-sdpa" in (out / "leaderboard.md").read_text()
    assert list((out / "plots").glob("*.png"))
