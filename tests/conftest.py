"""Shared fixtures: the real Hydra configs, composed and shrunk for tests, and the runners' entry
points run as a user runs them, in a process of their own (run_cli) or, quicker, in this one (run_main)."""

from __future__ import annotations

import atexit
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterator, Optional

# Under pytest-xdist (`make test` runs a worker process per core) each worker, and the commands it
# starts, share the cores out: torch's default of a thread per core in every one of them would
# oversubscribe the cores, and a tiny run then takes twice as long. A value set outside wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# What the suite writes besides its tests' tmp_path folders (the caches of datasets, matplotlib and torch's
# compiler, lra-bench's stand-ins for unwritable data roots, hypothesis' examples) goes to one folder of its
# own, removed at the end: nothing in the user's home or the checkout. pytest-xdist's workers, and the
# commands the tests start, inherit the controller's folder.
if "LRA_TEST_HOME" not in os.environ:
    os.environ["LRA_TEST_HOME"] = tempfile.mkdtemp(prefix="lra-tests-")
    atexit.register(shutil.rmtree, os.environ["LRA_TEST_HOME"], ignore_errors=True)
for _variable, _folder in {"HF_HOME": "huggingface", "XDG_CACHE_HOME": "cache", "MPLCONFIGDIR": "matplotlib",
                           "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton",
                           "HYPOTHESIS_STORAGE_DIRECTORY": "hypothesis"}.items():
    os.environ[_variable] = os.path.join(os.environ["LRA_TEST_HOME"], _folder)

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import lra.cli  # noqa: E402
import models.attention  # noqa: F401,E402  (registers every attention schema)
import tasks  # noqa: F401,E402  (registers every task schema)
from lra.config import CONF_DIR  # noqa: E402

REPO = CONF_DIR.parent

# A ListOps run that takes seconds: the cpu profile, smaller still (conf/experiment/smoke.yaml).
TINY = ["experiment=smoke"]


_UNTRACKED = pytest.StashKey[Optional[set]]()  # what the checkout held untracked when the run started


def _untracked() -> set[str] | None:
    """What git lists in the checkout as untracked or ignored (folders as one entry); None outside a git checkout."""
    try:
        listed = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
    except OSError:
        return None
    if listed.returncode != 0:
        return None
    return {line[3:] for line in listed.stdout.splitlines() if line[:2] in ("??", "!!")}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the process that started the run
        session.config.stash[_UNTRACKED] = _untracked()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run of the suite that left files in the checkout (tests write under their tmp_path alone);
    pytest's own cache aside. Checked once, by the process that started the run (not xdist's workers)."""
    before = session.config.stash.get(_UNTRACKED, None)
    after = _untracked() if before is not None else None
    left = sorted(path for path in (after or set()) - (before or set()) if not path.startswith(".pytest_cache"))
    if left:
        print(f"\nthe tests left files in the checkout {REPO}: {', '.join(left)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def compose_config(*overrides: str, config: str = "train") -> DictConfig:
    """The real config `config` with `overrides`, as lra-train would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """A composer of tiny ListOps runs whose data lives under this test's tmp dir."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(*TINY, f"data.root={tmp_path / 'data'}", *overrides)

    return make


def run_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would (no HYDRA_FULL_ERROR), with `env` added."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@contextmanager
def _process_state_kept(cwd: Path | None) -> Iterator[None]:
    """What an entry point changes in the process it runs in, put back afterwards: sys.argv, the
    environment, the working directory, torch's thread count, and the logging Hydra configures
    (its handlers, one of them a log file in the run directory, are closed)."""
    root = logging.getLogger()
    loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = [(lg, lg.level, lg.disabled, lg.propagate, list(lg.handlers)) for lg in loggers]
    argv, environ, here, threads = sys.argv, dict(os.environ), os.getcwd(), torch.get_num_threads()
    tracebacks = lra.cli._TRACEBACKS
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        for lg, level, disabled, propagate, handlers in saved:
            for handler in set(lg.handlers) - set(handlers):
                handler.close()
            lg.setLevel(level)
            lg.disabled, lg.propagate, lg.handlers[:] = disabled, propagate, handlers
        sys.argv, lra.cli._TRACEBACKS = argv, tracebacks
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(here)
        torch.set_num_threads(threads)


def run_main(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` (a runner) run in this process, as run_cli runs it in a new one:
    the runner's own `cli()` with `args` as its command line, its exit status and what it printed.

    The seconds a new process spends importing torch and Hydra are saved; a process of its own is
    still what a test of process-level behaviour (a signal, torchrun, Hydra's printed warnings) needs."""
    runner = importlib.import_module(module)
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode: int | str | None = 0
    with _process_state_kept(cwd), redirect_stdout(stdout), redirect_stderr(stderr):
        sys.argv = [runner.__file__, *args]
        os.environ.pop("HYDRA_FULL_ERROR", None)  # as a user runs it: one line, no traceback
        lra.cli._TRACEBACKS = False
        try:
            runner.cli()
        except SystemExit as done:
            returncode = done.code
    if not isinstance(returncode, int):  # sys.exit(None) is success, sys.exit("message") failure
        returncode = 0 if returncode is None else 1
    return subprocess.CompletedProcess([module, *args], returncode, stdout.getvalue(), stderr.getvalue())
