"""protocol=lra against the LRA repository's own configs (google-research/long-range-arena), and
protocol=clean where it departs from them on purpose.

The tables below are the values of the repository's config files, as our keys name them: each task's
base config (lra_benchmarks/<task>/configs/base_*_config.py, with the defaults of
models/transformer/transformer.py TransformerEncoder for what a config leaves unset: dropout 0.1,
attention dropout 0.1, sinusoidal positions), then what each variant's own file changes. The optimizer's
betas and epsilon are those of every `*/train.py` create_optimizer (Adam, 0.9, 0.98, 1e-9).
"""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from lra.config import CONF_DIR
from lra.records import config_hash, make_record
from lra.report import accuracy_tables, load_records, summarise
from tests.conftest import compose_config
from tests.report_fixtures import train, write

ADAM = {"optimizer.beta1": 0.9, "optimizer.beta2": 0.98, "optimizer.eps": 1e-9}
UNSET = {"model.dropout": 0.1, "model.positions": "sinusoidal", "optimizer.grad_clip": None}

# Each task's base config file and its values.
BASE: dict[str, tuple[str, dict[str, Any]]] = {
    "listops": ("lra_benchmarks/listops/configs/base_listops_config.py", {
        **UNSET, **ADAM, "model.num_layers": 4, "model.dim": 512, "attention width": 512, "model.num_heads": 8,
        "model.mlp_dim": 1024, "model.pooling": "cls", "optimizer.lr": 0.05, "optimizer.weight_decay": 0.1,
        "optimizer.schedule": "rsqrt", "optimizer.warmup_steps": 1000, "trainer.batch_size": 32,
        "trainer.max_steps": 5000, "trainer.eval_every": 50, "task.max_len": 2000}),
    "text": ("lra_benchmarks/text_classification/configs/base_tc_config.py", {
        **UNSET, **ADAM, "model.num_layers": 4, "model.dim": 256, "attention width": 256, "model.num_heads": 4,
        "model.mlp_dim": 1024, "model.pooling": "cls", "optimizer.lr": 0.05, "optimizer.weight_decay": 0.1,
        "optimizer.schedule": "rsqrt", "optimizer.warmup_steps": 8000, "trainer.batch_size": 32,
        "trainer.max_steps": 20000, "trainer.eval_every": 100, "task.max_len": 1000}),
    "retrieval": ("lra_benchmarks/matching/configs/base_match_config.py", {
        **UNSET, **ADAM, "model.num_layers": 4, "model.dim": 128, "attention width": 128, "model.num_heads": 4,
        "model.mlp_dim": 512, "model.pooling": "first", "optimizer.lr": 0.05, "optimizer.weight_decay": 0.1,
        "optimizer.schedule": "rsqrt", "optimizer.warmup_steps": 8000, "trainer.batch_size": 32,
        "trainer.max_steps": 5000, "trainer.eval_every": 100, "task.max_len": 4000}),
    "image": ("lra_benchmarks/image/configs/cifar10/base_cifar10_config.py", {
        **ADAM, "model.num_layers": 1, "model.dim": 32, "attention width": 32, "model.num_heads": 1,
        "model.mlp_dim": 64, "model.dropout": 0.3, "model.attention.dropout": 0.2, "model.pooling": "cls",
        "model.positions": "learned", "optimizer.lr": 5e-4, "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "cosine", "optimizer.warmup_steps": 175, "optimizer.grad_clip": None,
        "trainer.batch_size": 256, "trainer.max_steps": 35000, "trainer.eval_every": 175, "task.max_len": 1024}),
    "pathfinder": ("lra_benchmarks/image/configs/pathfinder32/base_pathfinder32_config.py", {
        **ADAM, "model.num_layers": 1, "model.dim": 32, "attention width": 16, "model.num_heads": 2,
        "model.mlp_dim": 32, "model.dropout": 0.1, "model.attention.dropout": 0.1, "model.pooling": "mean",
        "model.positions": "sinusoidal", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "cosine", "optimizer.warmup_steps": 312, "optimizer.grad_clip": None,
        "trainer.batch_size": 512, "trainer.max_steps": 62400, "trainer.eval_every": 312, "task.max_len": 1024}),
    "pathx": ("lra_benchmarks/image/configs/pathfinder128/base_pathfinder128_config.py", {
        **ADAM, "model.num_layers": 1, "model.dim": 32, "attention width": 16, "model.num_heads": 2,
        "model.mlp_dim": 32, "model.dropout": 0.1, "model.attention.dropout": 0.1, "model.pooling": "mean",
        "model.positions": "learned", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "cosine", "optimizer.warmup_steps": 2500, "optimizer.grad_clip": 1.0,
        "trainer.batch_size": 64, "trainer.max_steps": 500000, "trainer.eval_every": 2500, "task.max_len": 16384}),
}

# Our variants (conf/model/) and the file each has in a task's configs directory, where it has one.
LRA_FILES = {"full": "transformer_base.py", "full_math": "transformer_base.py", "bigbird": "bigbird_base.py",
             "linear": "linear_transformer_base.py", "linformer": "linformer_base.py", "local": "local_base.py",
             "longformer": "longformer_base.py", "performer": "performer_base.py", "lsh": "reformer_base.py",
             "sinkhorn": "sinkhorn_base.py", "sparse": "sparse_transformer_base.py",
             "synthesizer": "synthesizer_base.py"}


def sizes(layers: int, dim: int, width: int, heads: int | None, mlp: int, **more: Any) -> dict[str, Any]:
    """A variant file's model sizes (emb_dim, qkv_dim, ...) as our keys name them."""
    values = {"model.num_layers": layers, "model.dim": dim, "attention width": width, "model.mlp_dim": mlp, **more}
    return values if heads is None else {**values, "model.num_heads": heads}


CLS, MEAN = {"model.pooling": "cls"}, {"model.pooling": "mean"}
# What each variant's own file changes, per configs directory (those whose files change nothing but the
# model type are left out: ListOps, Text, Retrieval, and Path-X's one file).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "lra_benchmarks/image/configs/cifar10": {
        "transformer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
        "bigbird_base.py": sizes(1, 128, 64, None, 128, **CLS),  # `num_head = 4`: no such parameter
        "linear_transformer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
        "linformer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
        "local_base.py": {**sizes(1, 128, 64, 2, 128, **MEAN), "model.attention.window": 32},  # block_size 64
        "longformer_base.py": sizes(4, 128, 64, 4, 128, **MEAN),
        "performer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
        "reformer_base.py": sizes(4, 64, 32, 8, 64, **CLS),
        "sinkhorn_base.py": {"model.num_layers": 1, "model.dropout": 0.1, "optimizer.weight_decay": 0.7},
        "sparse_transformer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
        "synthesizer_base.py": sizes(1, 128, 64, 8, 128, **CLS),
    },
    "lra_benchmarks/image/configs/pathfinder32": {
        "transformer_base.py": sizes(4, 32, 16, 4, 32, **{"model.dropout": 0.2}),
        "bigbird_base.py": sizes(4, 64, 32, 2, 64, **{"model.dropout": 0.2}),
        "linear_transformer_base.py": sizes(1, 128, 64, 2, 128, **{"model.dropout": 0.2}),
        "linformer_base.py": sizes(1, 32, 16, 2, 32, **{"model.dropout": 0.2}),
        "local_base.py": sizes(2, 64, 32, 4, 64, **{"model.dropout": 0.1, "model.attention.window": 32}),
        "longformer_base.py": sizes(2, 32, 16, 2, 32, **{"model.dropout": 0.1}),
        "performer_base.py": sizes(4, 32, 16, 8, 32, **{"model.dropout": 0.2}),
        "reformer_base.py": sizes(2, 64, 32, 8, 64, **{"model.dropout": 0.2}),
        "sinkhorn_base.py": sizes(2, 32, 16, 4, 64, **{"model.dropout": 0.2}),
        "sparse_transformer_base.py": sizes(1, 32, 16, 8, 32, **{"model.dropout": 0.2}),
        "synthesizer_base.py": sizes(2, 64, 32, 4, 64, **{"model.dropout": 0.2}),
    },
    "lra_benchmarks/image/configs/pathfinder128": {"transformer_base.py": {}},
}
MODELS = sorted(yaml.stem for yaml in (CONF_DIR / "model").glob("*.yaml"))


def expected(task: str, model: str) -> tuple[str, dict[str, Any]]:
    """The LRA file a run of `model` on `task` follows, and its values: the variant's own file over
    the base config where the task's configs directory has one, else the base config."""
    base, values = BASE[task]
    directory = base.rsplit("/", 1)[0]
    variant = VARIANTS.get(directory, {}).get(LRA_FILES.get(model, ""))
    if variant is None:
        return base, values
    return f"{directory}/{LRA_FILES[model]}", {**values, **variant}


def value(cfg, key: str) -> Any:
    """`key` of the composed config, as the tables name it (enums by their value)."""
    if key == "attention width":
        return cfg.model.qkv_dim or cfg.model.dim
    found = OmegaConf.select(cfg, key)
    return getattr(found, "value", found)


@pytest.mark.parametrize("task", list(BASE))
def test_protocol_lra_on_the_gpu_is_the_lra_repository_config_of_every_variant(task):
    for model in MODELS:
        cfg = compose_config("protocol=lra", "hardware=gpu", f"task={task}", f"model={model}")
        source, values = expected(task, model)
        where = f"task={task} model={model} ({source})"
        assert cfg.protocol.source == source, where
        assert (cfg.protocol.note is None) == (source != BASE[task][0]), where  # says when the base config stands in
        mismatched = {key: (value(cfg, key), want) for key, want in values.items() if value(cfg, key) != want}
        assert not mismatched, f"{where}: ours, LRA's: {mismatched}"


def test_protocol_lra_takes_every_quirk_and_clean_none():
    lra, clean = compose_config("protocol=lra"), compose_config()
    quirks = {"model.init": "lra", "model.attention_bias": False, "model.norm_eps": 1e-6,
              "model.padding_mask": "nonzero", "model.pool_padding": True, "model.dual_head": "lra",
              "optimizer.decay": "all", "trainer.test_checkpoint": "last"}
    ours = {"model.init": "torch", "model.attention_bias": True, "model.norm_eps": 1e-5,
            "model.padding_mask": "real", "model.pool_padding": False, "model.dual_head": "nli",
            "optimizer.decay": "matrices", "trainer.test_checkpoint": "best"}
    assert {key: value(lra, key) for key in quirks} == quirks
    assert {key: value(clean, key) for key in ours} == ours
    assert (lra.protocol.name, clean.protocol.name) == ("lra", "clean")


def test_clean_text_validates_on_training_data_and_lra_on_the_test_split():
    clean, lra = (compose_config(f"protocol={p}", "hardware=gpu", "task=text") for p in ("clean", "lra"))
    assert clean.task.val_fraction == 0.1 and lra.task.val_fraction is None
    assert (clean.task.max_len, lra.task.max_len) == (4000, 1000)  # the paper's length, the released config's


def test_a_knob_can_be_taken_alone_and_the_cpu_profile_keeps_its_own_sizes():
    mixed = compose_config("protocol=lra", "model.init=torch", "task=image", "model=local")
    assert value(mixed, "model.init") == "torch" and value(mixed, "model.padding_mask") == "nonzero"
    # hardware=cpu shrinks the model whatever the protocol: the LRA variant file's sizes do not leak
    cpu = compose_config("protocol=lra", "task=pathfinder", "model=performer")
    assert (cpu.model.num_layers, cpu.model.dim, cpu.model.qkv_dim) == (1, 32, None)
    assert cpu.protocol.source.endswith("pathfinder32/performer_base.py")


def test_the_protocol_changes_the_config_hash_and_names_the_record():
    lra, clean = compose_config("protocol=lra"), compose_config()
    assert config_hash(lra) != config_hash(clean)
    record = make_record(lra, kind="train", status="failed", metrics={}, seq_len=1, batch_size=1, env={}, wall_s=0.0)
    assert record["protocol"] == "lra"


def test_the_report_gives_each_protocol_rows_of_its_own(tmp_path):
    runs = [train("full-sdpa", "listops", accuracy, seed) for seed, accuracy in ((0, 0.40), (1, 0.42))]
    runs += [train("full-sdpa", "listops", accuracy, seed, protocol="lra") for seed, accuracy in ((0, 0.30), (1, 0.32))]
    [table] = accuracy_tables(summarise(load_records(write(tmp_path / "runs", *runs))).accuracy)
    rows = table.frame["listops"]
    assert rows["full-sdpa"].startswith("41.00") and rows["full-sdpa + lra protocol"].startswith("31.00")
