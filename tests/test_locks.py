"""The lock of a directory (lra.files.exclusive): one holder at a time across processes, a waiter
that says why it waits, and no stale lock once a holder is killed."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

from lra.files import exclusive

HOLD = """
import sys, time
from pathlib import Path
from lra.files import exclusive
with exclusive(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_waiter_logs_why_it_waits_and_enters_once_the_holder_is_killed(tmp_path: Path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    entered = threading.Event()

    def enter() -> None:
        with exclusive(tmp_path):
            entered.set()

    try:
        assert holder.stdout.readline() == "holding\n"
        with caplog.at_level(logging.INFO, logger="lra.files"):
            waiter = threading.Thread(target=enter)
            waiter.start()
            assert not entered.wait(0.5)  # the other process holds the directory
            holder.kill()  # SIGKILL: no chance to release anything itself
            assert entered.wait(10)
            waiter.join()
    finally:
        holder.kill()
        holder.wait()
    assert f"waiting for another process working in {tmp_path}" in caplog.text
