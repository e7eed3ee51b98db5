"""The file system says no: reading needs no write access, and a refusal is one line.

A complete release on a read-only data.root trains and stays byte for byte as it was (its lock
and token cache go to a stand-in in the user's cache, or nowhere: lra.files.data_home). Every
refusal that reaches a command line (no permission, a read-only mount, a full disk, a file where
a directory must be) is one line naming the path and the cause, exit status 2, no traceback, no
partial file; in a sweep the job's `failed` record keeps the cause. Root ignores permission bits,
so the faults are made with read-only mounts, tiny file systems and dropped capabilities
(tests.faults.confined), each in a process of its own; the rest run in this process (run_main).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lra.cli
import lra.files
from lra.files import LOCK_FILE, USER_CACHE, atomic_write, data_home, describe_os_error
from lra.records import RECORDS_FILE, read_records
from tasks import listops
from tasks.cache import CACHE_DIR
from tests.conftest import REPO, TINY, compose_config, run_main
from tests.faults import TEMPORARY, confined, left_on, one_error_line, temporary_files
from tests.report_fixtures import sample_runs

FULL = "No space left on device"
READ_ONLY = "Read-only file system"
QUICK = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2"]


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch) -> Path:
    """The user's cache dir of this test (XDG_CACHE_HOME), with datasets' and matplotlib's caches
    beside it: nothing a test runs writes outside its tmp dir."""
    for name, variable in [("user-cache", "XDG_CACHE_HOME"), ("hf", "HF_HOME"), ("mpl", "MPLCONFIGDIR")]:
        (tmp_path / name).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / name))
    return tmp_path / "user-cache"


def smoke_data(root: Path) -> Path:
    """`root` holding the complete ListOps data of experiment=smoke, as a run generates it."""
    task = compose_config(*TINY).task
    listops.write_release(root / task.dir, **OmegaConf.to_container(task.generate, resolve=True), progress=False)
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root`, hidden ones too: a file's bytes, None for a directory."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else None for path in root.rglob("*")}


def train(root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """The command line of a quick lra-train run reading `root`, writing `run_dir`."""
    return [sys.executable, "-m", "runners.train", *TINY, *QUICK, f"data.root={root}", f"hydra.run.dir={run_dir}",
            *overrides]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a command line as a user would (no HYDRA_FULL_ERROR) from the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_nothing_half_written(directory: Path, *tiny: Path) -> None:
    """No job records and no staged temporary file under `directory`, nor on the tiny file systems
    of a confined command (`tiny`: as it left them)."""
    assert not list(directory.rglob(RECORDS_FILE)) and not temporary_files(directory), sorted(directory.rglob("*"))
    for names in map(left_on, tiny):
        assert not [name for name in names if name.endswith(RECORDS_FILE) or any(
            fnmatch(Path(name).name, pattern) for pattern in TEMPORARY)], names


# --- a read-only data.root ------------------------------------------------------------------------


def test_a_complete_read_only_release_trains_and_stays_byte_for_byte_as_it_was(tmp_path: Path, user_cache: Path):
    root = smoke_data(tmp_path / "release")
    before = snapshot(root)
    result = run(confined(train(root, tmp_path / "run"), read_only=[root]))
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_records(tmp_path / "run" / RECORDS_FILE)
    assert record["status"] == "ok"
    assert snapshot(root) == before and not (root / LOCK_FILE).exists() and not (root / CACHE_DIR).exists()
    [stand_in] = (user_cache / USER_CACHE).iterdir()  # the lock and the cache went there instead
    assert stand_in.name.startswith("release-") and (stand_in / LOCK_FILE).is_file()
    assert [entry.name.split("-")[0] for entry in (stand_in / CACHE_DIR).iterdir()] == ["listops"]


def test_with_no_writable_cache_either_a_read_only_release_trains_from_memory_and_says_so_once(
    tmp_path: Path, user_cache: Path
):
    root = smoke_data(tmp_path / "release")
    before = snapshot(root), snapshot(user_cache)
    result = run(confined(train(root, tmp_path / "run"), read_only=[root, user_cache]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_records(tmp_path / "run" / RECORDS_FILE)[0]["status"] == "ok"
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "not cached" in line]
    assert len(warnings) == 1 and f"{root}: not writable" in warnings[0], warnings
    assert (snapshot(root), snapshot(user_cache)) == before


@pytest.mark.parametrize("below", [False, True], ids=["data.root", "data.root below it"])
def test_generating_into_a_read_only_directory_is_one_line_saying_where_to_generate_instead(
    tmp_path: Path, below: bool
):
    mount = tmp_path / "release"
    mount.mkdir()
    root = mount / "data" if below else mount
    result = run(confined(train(root, tmp_path / "run"), read_only=[mount]))
    line = one_error_line(result, "lra-train", str(root), READ_ONLY)
    assert "point data.root at a writable directory" in line and "lra-data ... --out" in line
    assert not any(mount.iterdir())
    assert_nothing_half_written(tmp_path)


# --- a data.root that cannot be read ----------------------------------------------------------------


def test_a_data_root_that_is_a_file_is_one_line(tmp_path: Path):
    root = tmp_path / "data"
    root.write_text("not a directory\n")
    result = run_main("runners.train", *TINY, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    one_error_line(result, "lra-train", f"data.root={root}: not a directory (it is a file)")
    assert_nothing_half_written(tmp_path)


def test_a_data_root_below_a_file_is_one_line_naming_the_file(tmp_path: Path):
    file = tmp_path / "data"
    file.write_text("not a directory\n")
    result = run_main("runners.train", *TINY, f"data.root={file / 'lra'}", f"hydra.run.dir={tmp_path / 'run'}")
    one_error_line(result, "lra-train", str(file / "lra"), f"not a directory ({file} is a file)")
    assert file.read_text() == "not a directory\n"
    assert_nothing_half_written(tmp_path)


def test_an_unreadable_data_root_is_one_line(tmp_path: Path):
    root = smoke_data(tmp_path / "data")
    root.chmod(0)
    try:
        result = run(confined(train(root, tmp_path / "run"), obey_modes=True))
    finally:
        root.chmod(0o755)
    one_error_line(result, "lra-train", f"data.root={root}: Permission denied")
    assert_nothing_half_written(tmp_path)


# --- a run directory that cannot be written -------------------------------------------------------


@pytest.mark.parametrize("module, prog, overrides", [("runners.train", "lra-train", TINY),
                                                     ("runners.bench", "lra-bench", ["bench.seq_lens=[64]"])])
def test_a_run_directory_below_a_file_is_one_line_naming_the_file(tmp_path: Path, module: str, prog: str,
                                                                   overrides: list[str]):
    file = tmp_path / "runs"
    file.write_text("not a directory\n")
    result = run_main(module, *overrides, f"data.root={tmp_path / 'data'}", f"hydra.run.dir={file / 'run'}")
    one_error_line(result, prog, str(file / "run"), f"not a directory ({file} is a file)")
    assert file.read_text() == "not a directory\n" and not (tmp_path / "data").exists()


@pytest.mark.parametrize("below", [False, True], ids=["run dir", "run dir below it"])
def test_a_read_only_run_directory_is_one_line(tmp_path: Path, below: bool):
    root, mount = smoke_data(tmp_path / "data"), tmp_path / "runs"
    mount.mkdir()
    run_dir = mount / "run" if below else mount
    result = run(confined(train(root, run_dir), read_only=[mount]))
    one_error_line(result, "lra-train", str(run_dir), READ_ONLY)
    assert not any(mount.iterdir())


# --- a full disk ----------------------------------------------------------------------------------


def test_a_full_run_directory_is_one_line_and_leaves_no_half_written_file(tmp_path: Path):
    root, run_dir = smoke_data(tmp_path / "data"), tmp_path / "run"
    run_dir.mkdir()
    result = run(confined(train(root, run_dir), tiny={run_dir: "256k"}))
    line = one_error_line(result, "lra-train", str(run_dir), FULL)
    assert "Logging error" not in result.stdout + result.stderr, line
    assert "./.hydra/config.yaml" in left_on(run_dir)  # the disk filled during the run, not before it
    assert_nothing_half_written(tmp_path, run_dir)


def test_generating_onto_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    result = run(confined(train(root, tmp_path / "run"), tiny={root: "16k"}))
    one_error_line(result, "lra-train", str(root), FULL)
    assert_nothing_half_written(tmp_path, root)


def test_a_cache_that_fills_the_disk_is_one_line(tmp_path: Path, user_cache: Path):
    root = smoke_data(tmp_path / "release")
    result = run(confined(train(root, tmp_path / "run"), read_only=[root], tiny={user_cache: "16k"}))
    one_error_line(result, "lra-train", str(user_cache / USER_CACHE), FULL)
    assert_nothing_half_written(tmp_path, user_cache)


def test_in_a_sweep_the_failed_record_keeps_the_cause_and_the_path(tmp_path: Path, user_cache: Path):
    root, sweep = smoke_data(tmp_path / "release"), tmp_path / "sweep"
    argv = [*train(root, tmp_path / "unused"), f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep.report=false"]
    argv.insert(argv.index("runners.train") + 1, "-m")
    result = run(confined(argv, read_only=[root], tiny={user_cache: "16k"}))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 failed" in result.stdout and "Traceback" not in result.stdout + result.stderr
    [records] = list(sweep.rglob(RECORDS_FILE))
    [record] = read_records(records)
    assert record["status"] == "failed" and FULL in record["error"] and str(user_cache / USER_CACHE) in record["error"]
    assert not temporary_files(tmp_path) and not [name for name in left_on(user_cache) if ".tmp" in name]


# --- outputs: lra-report's out=, lra-data's --out ---------------------------------------------------


@pytest.mark.parametrize("below", [False, True], ids=["out", "out below it"])
def test_a_report_out_that_is_or_is_below_a_file_is_one_line(tmp_path: Path, below: bool):
    file = tmp_path / "report"
    file.write_text("not a directory\n")
    out = file / "tables" if below else file
    result = run_main("runners.report", f"runs={sample_runs(tmp_path / 'runs')}", f"out={out}")
    cause = f"not a directory ({file} is a file)" if below else "not a directory (it is a file)"
    one_error_line(result, "lra-report", f"{out}: {cause}")
    assert file.read_text() == "not a directory\n"


def test_a_report_onto_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path: Path):
    runs, out = sample_runs(tmp_path / "runs"), tmp_path / "out"
    out.mkdir()
    result = run(confined([sys.executable, "-m", "runners.report", f"runs={runs}", f"out={out}"], tiny={out: "16k"}))
    one_error_line(result, "lra-report", str(out), FULL)
    assert not temporary_files(tmp_path) and not [name for name in left_on(out) if ".tmp" in name]


@pytest.mark.parametrize("below", [False, True], ids=["--out", "--out below it"])
def test_lra_data_out_that_is_or_is_below_a_file_is_one_line(tmp_path: Path, below: bool):
    file = tmp_path / "listops"
    file.write_text("not a directory\n")
    out = file / "listops-1000" if below else file
    result = run_main("runners.data", "listops", "--out", str(out), "--train", "8", "--val", "4", "--test", "4",
                      "--no-progress")
    cause = f"not a directory ({file} is a file)" if below else "not a directory (it is a file)"
    one_error_line(result, "lra-data", f"{out}: {cause}")
    assert file.read_text() == "not a directory\n" and not temporary_files(tmp_path)


def test_lra_data_onto_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path: Path):
    out = tmp_path / "listops-1000"
    out.mkdir()
    argv = [sys.executable, "-m", "runners.data", "listops", "--out", str(out), "--train", "16", "--val", "2",
            "--test", "2", "--no-progress"]
    result = run(confined(argv, tiny={out: "16k"}))
    one_error_line(result, "lra-data", str(out), FULL)
    assert left_on(out) == []  # no split file, not even a staged one


# --- the rules themselves -------------------------------------------------------------------------


def test_a_data_root_keeps_its_lock_and_cache_itself_where_it_may_write_else_in_a_stand_in(
    tmp_path: Path, user_cache: Path, monkeypatch
):
    release, link, new = tmp_path / "release", tmp_path / "link", tmp_path / "new" / "data"
    release.mkdir()
    link.symlink_to(release)
    assert data_home(release) == release and data_home(new) == new  # one it may create counts too
    denied, access = [release], os.access

    def refused(path: str, mode: int) -> bool:
        """os.access as it answers where `denied` are read-only mounts."""
        return access(path, mode) and not any(Path(path).resolve().is_relative_to(d) for d in denied)

    monkeypatch.setattr(lra.files.os, "access", refused)
    stand_in = data_home(release)
    assert stand_in.parent == user_cache / USER_CACHE and stand_in.name.startswith("release-")
    assert data_home(link) == stand_in  # keyed by the resolved path: every spelling meets the same lock
    denied.append(user_cache)
    assert data_home(release) is None


def test_a_failed_write_names_its_file_even_under_a_library_error(tmp_path: Path):
    path = tmp_path / "checkpoints" / "last.pt"

    def fill(file) -> None:  # as torch.save fails on a full disk: its own error raised over the OSError
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904

    with pytest.raises(OSError) as raised:
        atomic_write(path, fill)
    assert describe_os_error(raised.value) == f"{path}: {FULL}"
    assert not temporary_files(tmp_path) and not path.exists()


def test_hydra_full_error_still_shows_the_traceback_and_a_bug_is_never_one_line(monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="a bug"), lra.cli.reported("lra-train"):
        raise RuntimeError("a bug")
    monkeypatch.setattr(lra.cli, "_TRACEBACKS", True)
    with pytest.raises(OSError, match=FULL), lra.cli.reported("lra-train"):
        raise OSError(errno.ENOSPC, FULL, "/x/run/records.jsonl")
    assert capsys.readouterr().err == ""
