"""Associative recall: what a sequence holds, its errors, who can see the answer, and that full attention learns it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lra.errors import LRAError
from models.encoder import Classifier
from tasks.recall import FILLER, FIRST_PAIR, RecallConfig, RecallExamples, draw, load
from tests.conftest import compose_config, run_main


def decoded(config: RecallConfig, tokens: np.ndarray) -> tuple[int, dict[int, tuple[int, int]]]:
    """The asked key and {key: (value, position)} of one sequence, read back from its tokens."""
    pairs_end = FIRST_PAIR + config.keys * config.num_classes
    asked = int(tokens[0]) - pairs_end
    pairs = {}
    for position, token in enumerate(tokens[1:], start=1):
        if token != FILLER:
            assert FIRST_PAIR <= token < pairs_end, f"position {position}: {token} is not a pair token"
            key, value = divmod(int(token) - FIRST_PAIR, config.num_classes)
            assert key not in pairs, "a key occurs twice"
            pairs[key] = (value, position)
    return asked, pairs


@pytest.mark.parametrize("max_len,pairs,gap", [(40, 4, 10), (300, 16, 64), (70, 6, 64)])
def test_each_sequence_asks_one_of_its_keys_whose_value_is_the_label(max_len, pairs, gap):
    config = RecallConfig(max_len=max_len, pairs=pairs, gap=gap, keys=24, num_classes=5)
    tokens, labels = draw(config, 500, np.random.default_rng(1))
    assert tokens.shape == (500, max_len) and tokens.max() < config.vocab_size
    for row, label in zip(tokens, labels):
        asked, found = decoded(config, row)
        assert len(found) == pairs and asked in found
        assert found[asked][0] == label
        assert min(position for _, position in found.values()) >= gap  # none nearer the query than the gap


def test_classes_are_balanced_and_a_seed_names_one_dataset():
    examples = RecallExamples(train=4000, val=10, test=10)
    config = RecallConfig(max_len=128, examples=examples)
    first, again = load(config, Path("unused"), True, False), load(config, Path("unused"), True, False)
    assert first.train.labels.tolist() == again.train.labels.tolist()
    assert torch.equal(first.train[7][0][0], again.train[7][0][0])
    other = load(RecallConfig(max_len=128, seed=1, examples=examples), Path("unused"), True, False)
    assert first.train.labels.tolist() != other.train.labels.tolist()
    shares = np.bincount(first.train.labels, minlength=config.num_classes) / 4000
    assert np.all(np.abs(shares - 1 / config.num_classes) < 0.03)


@pytest.mark.parametrize("changes,key", [
    ({"keys": 3, "pairs": 4}, "task.keys"),
    ({"max_len": 60, "gap": 64}, "task.max_len"),
    ({"pairs": 0}, "task.pairs"),
    ({"gap": 0}, "task.gap"),
    ({"num_classes": 1}, "task.num_classes"),
])
def test_impossible_settings_name_their_key(changes, key):
    with pytest.raises(LRAError, match=key.replace(".", r"\.")):
        RecallConfig(**changes).check()


def query_logits(model: str, tokens: torch.Tensor, *overrides: str) -> torch.Tensor:
    cfg = compose_config(f"model={model}", "task=recall", "task.max_len=160", *overrides)
    torch.manual_seed(0)
    config = RecallConfig(max_len=160, pairs=4, keys=8, num_classes=4)
    classifier = Classifier(cfg.model, config.vocab_size, config.num_classes, config.max_len).eval()
    with torch.no_grad():
        return classifier(tokens, None)


def test_local_attention_never_sees_a_pair_beyond_its_reach_and_full_attention_does():
    """The gap puts every pair beyond num_layers x window of the query: local attention's answer
    cannot depend on the pairs (so it sits at chance), full attention's does."""
    config = RecallConfig(max_len=160, pairs=4, keys=8, num_classes=4, gap=64)
    tokens, _ = draw(config, 8, np.random.default_rng(0))
    key, value = np.divmod(tokens - FIRST_PAIR, config.num_classes)
    changed = np.where(tokens == FILLER, FILLER, FIRST_PAIR + key * config.num_classes + (value + 1) % 4)
    changed[:, 0] = tokens[:, 0]  # the same question
    assert (changed != tokens).sum() == 8 * 4  # every pair's value changed, nothing else
    local = ("model.num_layers=2", "model.attention.window=25")  # reach 2 x 25 = 50 < gap 64
    a, b = (query_logits("local", torch.from_numpy(t), *local) for t in (tokens, changed))
    assert torch.allclose(a, b, atol=1e-6)
    a, b = (query_logits("full", torch.from_numpy(t), "model.num_layers=1") for t in (tokens, changed))
    assert not torch.allclose(a, b, atol=1e-3)


def test_full_attention_learns_a_short_recall_in_a_hundred_steps(tmp_path: Path):
    result = run_main(
        "runners.train", "task=recall", "model=full", "task.max_len=32", "task.gap=4", "task.pairs=4",
        "task.keys=8", "task.num_classes=4", "task.examples.train=3200", "task.examples.val=256",
        "task.examples.test=512", "trainer.max_steps=100", "trainer.eval_every=50", "trainer.progress=false",
        f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "records.jsonl").read_text())["metrics"]
    assert metrics["test_accuracy"] >= 0.9 and metrics["test_examples"] == 512
