"""Which weights a run's test split is scored with (trainer.test_checkpoint): the best checkpoint's
or the final ones, in a real tiny run whose best validation is not its last; after a resume of the
finished run; and as the model the finished run hands to distillation and compression."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from lra import checkpoint
from lra.engine.evaluation import predict
from lra.engine.finished import trained_config, trained_model, trained_record
from lra.engine.resume import BEST, LAST
from lra.records import RECORDS_FILE
from models.encoder import Classifier
from runners.train import train_run
from tasks import load_task, task_config

# ListOps (experiment=smoke), validated every other step at a rate high enough that validation
# accuracy goes up and down: the best validation is not the last (asserted below).
SETUP = ("trainer.eval_every=2", "optimizer.lr=0.01", "optimizer.schedule=constant")


def scored_loss(cfg: DictConfig, weights: dict[str, torch.Tensor]) -> float:
    """The mean test cross-entropy of a model with `weights`, computed here."""
    task = task_config(cfg.task)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len)
    model.load_state_dict(weights)
    _, labels, loss = predict(model, load_task(cfg.task, cfg.data, progress=False).test, cfg, torch.device("cpu"))
    return loss / len(labels)


def saved_model(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of the checkpoint at `path`."""
    return checkpoint.load(path, fallback=False)["model"]


def test_best_tests_the_best_checkpoint_and_last_the_final_weights(tiny_cfg, tmp_path: Path):
    configs = {which: tiny_cfg(*SETUP, f"trainer.test_checkpoint={which}") for which in ("best", "last")}
    runs = {which: train_run(cfg, tmp_path / which)["metrics"] for which, cfg in configs.items()}
    curve = [entry["val_accuracy"] for entry in runs["best"]["history"]]
    assert curve == [entry["val_accuracy"] for entry in runs["last"]["history"]]  # one training, tested two ways
    assert max(curve) > curve[-1]  # the setup: the best checkpoint is not the final weights
    best_loss = scored_loss(configs["best"], saved_model(tmp_path / "best" / BEST))
    final_loss = scored_loss(configs["last"], saved_model(tmp_path / "last" / LAST))
    assert abs(best_loss - final_loss) > 1e-4  # so a record's test loss tells which weights were tested
    for which, loss in (("best", best_loss), ("last", final_loss)):
        metrics = runs[which]
        assert metrics["tested"] == which and metrics["test_loss"] == pytest.approx(loss, rel=1e-6)
        # val_accuracy stays the best validation; last_val_accuracy is the final weights'
        assert (metrics["val_accuracy"], metrics["last_val_accuracy"]) == (max(curve), curve[-1])

    # a finished run resumed (its record lost): no step left to train, the same weights tested
    for which, cfg in configs.items():
        (tmp_path / which / RECORDS_FILE).unlink()
        resumed = train_run(cfg, tmp_path / which)["metrics"]
        assert resumed["steps"] == 20 and resumed["tested"] == which
        assert resumed["test_loss"] == pytest.approx(runs[which]["test_loss"], rel=1e-6)

    # what distillation and lra-compress read back: the model the record's test accuracy is of
    for which, path in (("best", BEST), ("last", LAST)):
        run_dir = tmp_path / which
        model = trained_model(run_dir, trained_config(trained_record(run_dir, "run")), "run")
        expected = saved_model(run_dir / path)
        assert all(torch.equal(tensor, expected[name]) for name, tensor in model.state_dict().items())
