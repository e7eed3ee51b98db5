"""Training techniques of lra-train: gradient accumulation, fp16 with a gradient scaler,
distillation from a teacher's checkpoint, and the encoder techniques in a whole run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lra import checkpoint
from lra.config import CONF_DIR, technique_fields
from lra.engine.device import seed_everything
from lra.engine.finished import trained_config
from lra.engine.objectives import Distillation, objective
from lra.engine.resume import LAST
from lra.engine.step import Trainee, micro_batch, train_step
from lra.errors import LRAError
from lra.optim import build_optimizer, build_scheduler
from lra.records import resolved, techniques
from models.encoder import Classifier
from runners.train import train_run
from tasks import task_config
from tasks.batching import pad_batch
from tests.conftest import compose_config


def trainee(cfg, model: Classifier, **fields) -> Trainee:
    optimizer = build_optimizer(model, cfg.optimizer)
    return Trainee(model=model, forward=model, optimizer=optimizer,
                   scheduler=build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps), **fields)


def gradients_at_the_update(t: Trainee) -> list[torch.Tensor]:
    """Filled with copies of the gradients the optimizer of `t` updates with, at its next step."""
    grads: list[torch.Tensor] = []
    t.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: grads.extend(p.grad.clone() for p in t.model.parameters()))
    return grads


def ragged_batch(size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """`size` ListOps-sized sequences of 5 to 40 tokens, padded, with labels."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 41, (size,), generator=gen)
    examples = [((torch.randint(1, 18, (int(n),), generator=gen),), int(torch.randint(10, (1,), generator=gen)))
                for n in lengths]
    return pad_batch(examples)


def test_accumulated_micro_batches_equal_one_batch_k_times_as_large():
    cfg = compose_config("experiment=smoke", "model=routing", "model.dropout=0.0", "model.attention.dropout=0.0")
    torch.manual_seed(0)
    model = Classifier(cfg.model, 18, 10, 48)
    batch = ragged_batch(8)
    start = [p.detach().clone() for p in model.parameters()]
    whole, accumulated = trainee(cfg, model), trainee(cfg, copy.deepcopy(model))
    grads = {name: gradients_at_the_update(t) for name, t in [("whole", whole), ("accumulated", accumulated)]}
    one = train_step(whole, batch, cfg, torch.device("cpu"))
    cfg.trainer.accumulate = 4
    four = train_step(accumulated, batch, cfg, torch.device("cpu"))
    assert torch.allclose(one["loss"], four["loss"], atol=1e-6)
    pairs = list(zip(whole.model.parameters(), accumulated.model.parameters()))
    for a, b in zip(grads["whole"], grads["accumulated"], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    for (a, b), grad in zip(pairs, grads["whole"], strict=True):
        # A gradient of rounding noise alone (the key bias: softmax ignores it) is scaled up to the learning
        # rate by Adam, whichever its sign: only informative gradients must give the same parameters.
        if grad.abs().max() > 1e-5:
            assert torch.allclose(a, b, atol=1e-6)
        assert a.grad is None and b.grad is None  # released once the optimizer has used them
    # the k-means update of routing, made once per step, saw all four micro-batches alike
    assert torch.allclose(whole.model.encoder.blocks[0].attn.centroids,
                          accumulated.model.encoder.blocks[0].attn.centroids, atol=1e-6)
    # and the step changed something: the parameters moved from where both started
    assert not any(torch.equal(a, b) for (a, _), b in zip(pairs, start))


def test_fp16_steps_scale_the_loss_and_skip_an_overflowing_step():
    cfg = compose_config("experiment=smoke", "hardware.precision=fp16", "optimizer.grad_clip=null")
    torch.manual_seed(0)
    model = Classifier(cfg.model, 18, 10, 48)
    before = [p.detach().clone() for p in model.parameters()]
    scaled = trainee(cfg, model, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**60))
    train_step(scaled, ragged_batch(4), cfg, torch.device("cpu"))  # fp16 gradients overflow at this scale
    assert scaled.scaler.get_scale() == 2.0**59
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step was skipped
    train_step(scaled, ragged_batch(4), cfg, torch.device("cpu"))
    assert scaled.scaler.get_scale() == 2.0**58


def test_an_fp16_run_keeps_its_scaler_in_the_checkpoint(tiny_cfg, tmp_path: Path):
    record = train_run(tiny_cfg("hardware.precision=fp16", "trainer.max_steps=6", "trainer.eval_every=6"), tmp_path)
    assert record["status"] == "ok" and record["precision"] == "fp16"
    saved = checkpoint.load(tmp_path / LAST)
    assert 0 < saved["scaler"]["scale"] <= 2.0**16


def test_distillation_loss_mixes_the_soft_and_hard_terms():
    torch.manual_seed(0)
    teacher_logits, logits = torch.randn(6, 5) * 3, torch.randn(6, 5)
    labels = torch.randint(5, (6,))

    class Fixed(torch.nn.Module):
        def forward(self, tokens, mask):
            return teacher_logits

    temperature, alpha = 2.5, 0.3
    loss, terms = Distillation(Fixed(), temperature, alpha)(logits, labels, None, None)
    p_teacher = (teacher_logits / temperature).softmax(-1)
    kl = (p_teacher * (p_teacher.log() - (logits / temperature).log_softmax(-1))).sum(-1).mean()
    hard = F.cross_entropy(logits, labels)
    assert torch.allclose(terms["soft"], kl * temperature**2, atol=1e-6)
    assert torch.allclose(terms["hard"], hard)
    assert torch.allclose(loss, alpha * kl * temperature**2 + (1 - alpha) * hard, atol=1e-6)
    assert Distillation(Fixed(), temperature, 0.0)(logits, labels, None, None)[0] == hard
    same, _ = Distillation(Fixed(), temperature, 1.0)(teacher_logits, labels, None, None)
    assert abs(float(same)) < 1e-6  # a student that is the teacher has nothing to learn from it


def test_a_distilled_run_names_its_teacher_and_its_loss_combines_both_terms(tiny_cfg, tmp_path: Path):
    teacher = train_run(tiny_cfg("trainer.max_steps=10"), tmp_path / "teacher")
    record = train_run(tiny_cfg("model=local", "trainer.max_steps=10", "trainer.log_every=10",
                            f"distill.teacher={tmp_path / 'teacher'}", "distill.alpha=0.25"), tmp_path / "student")
    assert record["status"] == "ok" and record["techniques"] == ["distilled"]
    metrics = record["metrics"]
    assert metrics["teacher"] == "full-sdpa" and metrics["teacher_run"] == str(tmp_path / "teacher")
    assert metrics["teacher_test_accuracy"] == teacher["metrics"]["test_accuracy"]
    soft, hard = metrics["train_loss_soft"], metrics["train_loss_hard"]
    assert soft > 0 and hard > 0
    assert metrics["train_loss"] == pytest.approx(0.25 * soft + 0.75 * hard, rel=1e-5)


def test_a_distilled_student_starts_from_the_weights_of_its_baseline(tiny_cfg, tmp_path: Path):
    train_run(tiny_cfg("trainer.max_steps=2", "trainer.eval_every=2"), tmp_path / "teacher")
    starts = []
    for teacher in ("null", tmp_path / "teacher"):  # the baseline, then the distilled run, as train() starts them
        cfg = tiny_cfg("model=local", f"distill.teacher={teacher}")
        seed_everything(cfg.seed)
        _, about = objective(cfg, torch.device("cpu"))
        task = task_config(cfg.task)
        starts.append((about, Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len).state_dict()))
    (no_teacher, baseline), (with_teacher, distilled) = starts
    assert not no_teacher and with_teacher["teacher"] == "full-sdpa"  # the teacher was built
    assert baseline.keys() == distilled.keys()
    assert all(torch.equal(baseline[name], distilled[name]) for name in baseline)


def test_a_teacher_must_be_a_finished_run_of_the_same_task(tiny_cfg, tmp_path: Path):
    with pytest.raises(LRAError, match="distill.teacher: .* not an lra-train run directory"):
        train_run(tiny_cfg(f"distill.teacher={tmp_path}"), tmp_path / "student")
    train_run(tiny_cfg("trainer.max_steps=4", "trainer.eval_every=4"), tmp_path / "teacher")
    with pytest.raises(LRAError, match=r"distill.teacher: .*\(max_len 48\).*\(max_len 40\)"):
        train_run(tiny_cfg(f"distill.teacher={tmp_path / 'teacher'}", "task.max_len=40", "task.generate.max_len=40"),
              tmp_path / "student")
    with pytest.raises(LRAError, match="distill.alpha"):
        train_run(tiny_cfg(f"distill.teacher={tmp_path / 'teacher'}", "distill.alpha=1.5"), tmp_path / "student")


def test_encoder_techniques_and_accumulation_train_and_are_named_in_the_record(tiny_cfg, tmp_path: Path):
    record = train_run(tiny_cfg("model.num_layers=2", "model.encoder.share_layers=true", "model.encoder.embed_dim=16",
                            "model.encoder.reversible=true", "trainer.accumulate=2", "trainer.max_steps=6",
                            "trainer.eval_every=6"), tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["techniques"] == ["shared layers", "embed 16", "reversible", "accumulate 2"]
    # trainer.batch_size is the step's batch, whatever the accumulation: 16 as 2 micro-batches of 8
    assert record["batch_size"] == 16 and record["metrics"]["micro_batch_size"] == 8
    assert record["metrics"]["accumulate"] == 2
    plain = train_run(tiny_cfg("model.num_layers=2", "trainer.max_steps=2", "trainer.eval_every=2"), tmp_path / "plain")
    # one block for two layers, and narrow embeddings: 0.60x here (the head and norms stay)
    assert 0 < record["metrics"]["weights_mb"] < 0.65 * plain["metrics"]["weights_mb"]
    with pytest.raises(LRAError, match="trainer.accumulate=0: must be at least 1"):
        train_run(tiny_cfg("trainer.accumulate=0"), tmp_path / "bad")
    with pytest.raises(LRAError, match="trainer.accumulate=3: must divide trainer.batch_size=16"):
        train_run(tiny_cfg("trainer.accumulate=3"), tmp_path / "bad")


def test_a_run_recorded_when_batch_size_was_the_micro_batch_is_rebuilt_with_its_whole_batch(tiny_cfg, tmp_path):
    record = train_run(tiny_cfg("trainer.accumulate=2", "trainer.max_steps=2", "trainer.eval_every=2"), tmp_path)
    assert trained_config(record).trainer.batch_size == 16
    older = {**record, "schema": 2, "config": {**record["config"], "trainer": {**record["config"]["trainer"],
                                                                               "batch_size": 8}}}
    assert trained_config(older).trainer.batch_size == 16  # 2 micro-batches of 8 per step, as that run trained


@pytest.mark.parametrize("hardware", ["cpu", "gpu"])
@pytest.mark.parametrize("task", ["listops", "text", "retrieval", "image", "pathfinder"])
def test_the_accumulate_preset_keeps_the_tasks_batch(task, hardware):
    """Only the accumulation differs from the run without it: the same examples per step, in 4 micro-batches."""
    alone = compose_config(f"task={task}", f"hardware={hardware}")
    accumulated = compose_config(f"task={task}", f"hardware={hardware}", "technique=accumulate")
    assert accumulated.trainer.batch_size == alone.trainer.batch_size
    assert accumulated.trainer.accumulate == 4 and micro_batch(accumulated) * 4 == alone.trainer.batch_size


def flat(node: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as `a.b.c` -> value."""
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("preset", sorted(path.stem for path in (CONF_DIR / "technique").glob("*.yaml")))
def test_every_technique_preset_sets_only_keys_the_records_name(preset):
    """A preset changes technique fields (lra.config metadata) or the precision, and the record names it."""
    plain, applied = flat(resolved(compose_config())), flat(resolved(compose_config(f"technique={preset}")))
    changed = {key for key in plain.keys() | applied.keys() if plain.get(key) != applied.get(key)}
    assert changed and changed <= {field.key for field in technique_fields()} | {"hardware.precision"}
    named = techniques(compose_config(f"technique={preset}"))
    assert len(named) == len(changed - {"hardware.precision"}) and techniques(compose_config()) == []
