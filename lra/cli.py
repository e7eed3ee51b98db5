"""Running a Hydra entry point so that bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lra.errors import LRAError

USER_ERRORS = (LRAError, HydraException, OmegaConfBaseException)


def describe(error: BaseException) -> str:
    """One line naming the group, key, file or line at fault and, where known, what is accepted."""
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        return f"{group}={name}: no such {group}; choose one of: {', '.join(error.options)}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    message = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]  # the rest repeats the key
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        message += _known_keys(getattr(cause, "object_type", None))
    line = f"{key}: {message}" if key else message
    return " ".join(line.split())


def _known_keys(object_type: Any) -> str:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return ""
    return "; known keys: " + ", ".join(f.name for f in dataclasses.fields(object_type))


# Read before `run` sets it: whether the user asked for full tracebacks.
_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def reported(prog: str) -> Iterator[None]:
    """Report a user error raised inside as `prog: error: ...` on one line, and exit 2.

    Used around Hydra's composition (by `run`) and inside the job function, so that Hydra does
    not add its own "Error executing job" line. HYDRA_FULL_ERROR=1 keeps the traceback.
    """
    try:
        yield
    except USER_ERRORS as error:
        if _TRACEBACKS:
            raise
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        sys.exit(2)


def run(hydra_main: Callable[[], Any], prog: str) -> None:
    """Call a `@hydra.main` function, asking Hydra to re-raise errors rather than print them."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with reported(prog):
        hydra_main()
