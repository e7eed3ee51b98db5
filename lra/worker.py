"""Run one function in a fresh worker process, so that what the process measures (its peak resident
memory) belongs to that call alone, and a call the system kills costs only that call.

Workers are forked from a fork server that has imported the modules named in `preload` once, so a
worker starts in milliseconds yet has never run any torch work of its own before the call.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from typing import Any, Callable


class WorkerDied(Exception):
    """The worker ended without a result: killed by a signal (often the kernel's OOM killer) or exited."""

    def __init__(self, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name
            super().__init__(f"the measuring process was killed by {name}")
        else:
            super().__init__(f"the measuring process exited with code {exitcode} before reporting")
        self.killed = exitcode == -signal.SIGKILL


class WorkerError(Exception):
    """The function raised in the worker; `type_name` and the one-line message travel back."""

    def __init__(self, type_name: str, message: str, details: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.details = type_name, message, details


def _serve(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    # Ctrl-C reaches every process of the terminal's command; the parent answers it (in one line), and
    # this worker, a daemon, ends with it rather than print a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ok", fn(*args)))
    except Exception as error:  # reported to the parent, which decides what it means
        conn.send(("error", (type(error).__name__, str(error), traceback.format_exc())))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, preload: list[str] | None = None) -> Any:
    """`fn(*args)` in a fresh process; its return value, or WorkerError / WorkerDied.

    `fn`, `args` and the return value must pickle; `fn` must be importable at module level.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload or [])
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(send, fn, args), daemon=True)
    process.start()
    send.close()
    try:
        outcome, value = receive.recv()
    except EOFError:
        process.join()
        raise WorkerDied(process.exitcode) from None
    finally:
        receive.close()
    process.join()
    if outcome == "error":
        raise WorkerError(*value)
    return value
