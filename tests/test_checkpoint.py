"""Checkpoints: one generation kept, a bad file reported and the previous state used, no code unpickled;
the best checkpoint kept without a previous generation, and an unreadable one an error."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from lra import checkpoint
from lra.engine.finished import trained_model
from lra.engine.resume import BEST
from lra.errors import LRAError
from runners.train import train_run


def state(step: int) -> dict:
    """A checkpoint shaped like lra.engine.resume's: tensors, numbers, strings and containers."""
    generator = torch.Generator().manual_seed(step)
    return {"run_state": {"step": step, "config_hash": "abc", "best_val": 0.5},
            "model": {"weight": torch.randn(4, 3, generator=generator)}, "rng_cpu": generator.get_state()}


def same(a: dict, b: dict) -> bool:
    """The same run state and the same tensors."""
    return (a["run_state"] == b["run_state"] and torch.equal(a["model"]["weight"], b["model"]["weight"])
            and torch.equal(a["rng_cpu"], b["rng_cpu"]))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    path.write_bytes(b"not a checkpoint\n" * 64)


class RunsCode:
    """A pickle payload that creates `marker` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class DiskFull:
    """Fails the save it is part of, as a full disk would, once torch.save has begun."""

    def __reduce__(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def no_hard_links(*args: object) -> None:
    raise OSError("no hard links on this filesystem")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_round_trip_keeps_the_replaced_checkpoint_as_the_previous_one(tmp_path: Path, caplog):
    path = tmp_path / checkpoint.LAST
    assert checkpoint.load(path) is None
    checkpoint.save(path, state(1))
    assert not checkpoint.previous(path).exists()
    checkpoint.save(path, state(2))
    assert checkpoint.previous(path) == tmp_path / "last.prev.pt"
    assert same(checkpoint.load(path), state(2))
    assert same(torch.load(checkpoint.previous(path), weights_only=True), state(1))
    checkpoint.save(path, state(3))
    assert same(torch.load(checkpoint.previous(path), weights_only=True), state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    assert not warnings(caplog)


@pytest.mark.parametrize("damage, why", [(truncate, "central directory"), (garble, "Unsupported operand")])
def test_a_damaged_checkpoint_is_named_and_the_previous_state_used(tmp_path: Path, caplog, damage, why):
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, state(1))
    checkpoint.save(path, state(2))
    damage(path)
    assert same(checkpoint.load(path), state(1))
    [warning] = warnings(caplog)
    assert warning.startswith(f"unreadable checkpoint {path} (") and why in warning
    assert warning.endswith(f"using the previous one, {checkpoint.previous(path)}") and "\n" not in warning


def test_both_damaged_is_one_error_naming_both(tmp_path: Path):
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, state(1))
    checkpoint.save(path, state(2))
    truncate(path)
    garble(checkpoint.previous(path))
    with pytest.raises(LRAError) as error:
        checkpoint.load(path)
    message = str(error.value)
    assert f"{path} (RuntimeError: " in message and f"{checkpoint.previous(path)} (UnpicklingError: " in message
    assert "\n" not in message


def test_only_the_previous_one_left_is_used(tmp_path: Path, caplog):
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, state(1))
    os.replace(path, checkpoint.previous(path))
    assert same(checkpoint.load(path), state(1))
    assert warnings(caplog) == [f"no checkpoint {path} (a save was cut short); using the previous one, "
                                f"{checkpoint.previous(path)}"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_save_that_dies_midway_leaves_the_last_state_loadable(tmp_path: Path, monkeypatch, caplog, hard_links):
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, state(1))
    checkpoint.save(path, state(2))
    if not hard_links:
        monkeypatch.setattr(os, "link", no_hard_links)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, {**state(3), "payload": DiskFull()})
    assert same(checkpoint.load(path), state(2))
    if hard_links:  # the old file never left its name
        assert same(torch.load(path, weights_only=True), state(2)) and not warnings(caplog)
    else:  # renamed away: only the previous one is left, and it is used
        assert not path.exists() and warnings(caplog)[0].startswith(f"no checkpoint {path}")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path, caplog):
    path, marker = tmp_path / checkpoint.LAST, tmp_path / "marker"
    checkpoint.save(path, state(1))
    checkpoint.save(path, state(2))
    torch.save({**state(3), "payload": RunsCode(marker)}, path)
    assert same(checkpoint.load(path), state(1))
    [warning] = warnings(caplog)
    assert f"unreadable checkpoint {path} (UnpicklingError: Unsupported global: GLOBAL exec" in warning

    torch.save({"payload": RunsCode(marker)}, checkpoint.previous(path))
    with pytest.raises(LRAError, match="no readable checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()


def test_without_fallback_no_previous_generation_is_kept_or_read(tmp_path: Path, caplog):
    path = tmp_path / checkpoint.BEST
    checkpoint.save(path, state(1))
    checkpoint.save(path, state(2))  # a previous generation, as a save that keeps one leaves it
    checkpoint.save(path, state(3), fallback=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    assert same(checkpoint.load(path, fallback=False), state(3))
    torch.save(state(2), checkpoint.previous(path))  # an older state beside it is never read
    truncate(path)
    with pytest.raises(LRAError) as error:
        checkpoint.load(path, fallback=False)
    message = str(error.value)
    assert message.startswith(f"unreadable checkpoint {path} (RuntimeError: ") and "force=true" in message
    assert str(checkpoint.previous(path)) not in message and "\n" not in message
    path.unlink()
    assert checkpoint.load(path, fallback=False) is None
    assert not warnings(caplog)


def test_an_unreadable_best_checkpoint_of_a_finished_run_is_one_error_never_an_older_model(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=4")
    train_run(cfg, tmp_path / "run")
    best = tmp_path / "run" / BEST
    assert not checkpoint.previous(best).exists()
    model = trained_model(tmp_path / "run", cfg, "distill.teacher")
    assert all(torch.equal(value, model.state_dict()[name])
               for name, value in torch.load(best, weights_only=True)["model"].items())
    older = {name: value + 1 if value.is_floating_point() else value for name, value in model.state_dict().items()}
    torch.save({"model": older}, checkpoint.previous(best))  # a readable older best beside it changes nothing
    garble(best)
    with pytest.raises(LRAError) as error:
        trained_model(tmp_path / "run", cfg, "distill.teacher")
    message = str(error.value)
    assert message.startswith(f"distill.teacher: unreadable checkpoint {best} (UnpicklingError: ")
    assert "force=true" in message and "\n" not in message
