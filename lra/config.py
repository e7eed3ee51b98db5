"""Structured-config schema of every entry point, registered in Hydra's ConfigStore.

The YAML files under conf/ hold the values; these dataclasses hold the types, so a typo or a
wrong-typed override fails at start-up with the key's full name. Variant- and task-specific
fields live in subclasses registered next to their code (models/attention, tasks).

Field metadata says what a field is beyond its type, so that no list of keys is kept elsewhere:
`UNHASHED` marks a key that changes how a run is shown, not what it computes (left out of the
config hash, lra.records); `technique(label)` marks a model-level technique, named in a record
by `label` (formatted with the value) when its value is not the default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
UNHASHED = {"hashed": False}  # field metadata: not part of the config hash


def technique(label: str) -> dict[str, str]:
    """Field metadata of a model-level technique, named `label` (with `{}`: the field's value)."""
    return {"technique": label}


class Choice(Enum):
    """A config value out of a fixed set; interpolates (`${...}`) as its bare value."""

    def __str__(self) -> str:
        return str(self.value)


class Pooling(Choice):
    cls = "cls"      # a learned token prepended to the sequence; its output
    mean = "mean"    # the mean of the real tokens' outputs
    first = "first"  # the first token's output, no token prepended (a task that puts its question first)


class Positions(Choice):
    sinusoidal = "sinusoidal"
    learned = "learned"


class Init(Choice):
    """How the encoder's parameters are initialised (models/encoder.py)."""

    torch = "torch"  # torch's defaults (Linear: kaiming-uniform(a=sqrt(5)) weights, fan-in uniform biases)
    lra = "lra"      # the LRA repository's (flax): Xavier-uniform, N(0, 1e-6) biases; lecun-normal classifier head


class PaddingMask(Choice):
    """Which tokens attention and mean pooling treat as padding."""

    real = "real"        # the batch's padding only
    nonzero = "nonzero"  # LRA's `inputs > 0`: every token id 0 too (a black pixel); CLS takes the first token's mask


class DualHead(Choice):
    """The classifier head of a two-tower (matching) model, on the encodings u and v."""

    nli = "nli"  # [u, v, u * v, u - v] -> dense (mlp_dim), ReLU -> dense (classes)
    lra = "lra"  # LRA's classifier_head_dual: [u, v] -> dense (mlp_dim), ReLU -> dense (mlp_dim // 2), ReLU -> dense


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16
    fp16 = "fp16"  # autocast to float16, the loss scaled by a gradient scaler


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


class MatmulPrecision(Choice):
    """How fp32 matrix products run (torch.set_float32_matmul_precision), the fp32 islands that
    attention variants keep under autocast included."""

    highest = "highest"  # full fp32 products
    high = "high"  # TF32 tensor cores on CUDA: 10-bit mantissa products, fp32 sums
    medium = "medium"  # bf16 products where the backend has them


class BenchMode(Choice):
    train = "train"  # one training step: forward, backward, optimizer
    infer = "infer"  # one forward pass without gradients


class BenchPadding(Choice):
    task = "task"  # padded as the task's batches are (TaskConfig.min_fill): none for a fixed-length task
    none = "none"  # every token real, no mask


class Schedule(Choice):
    constant = "constant"  # warm-up, then constant
    cosine = "cosine"  # warm-up, then cosine decay to zero at max_steps
    rsqrt = "rsqrt"  # LRA's "constant * linear_warmup * rsqrt_decay"


class Decay(Choice):
    """Which parameters weight decay shrinks (lra/optim.py)."""

    matrices = "matrices"  # weight matrices and embeddings (ndim >= 2); not biases nor norm scales
    all = "all"  # every parameter, as flax's optim.Adam(weight_decay=...) in the LRA repository


class TestCheckpoint(Choice):
    """The weights a run's test split is scored with (lra/engine/training.py)."""

    best = "best"  # the checkpoint of the best validation accuracy
    last = "last"  # the final weights, as the LRA repository tests


class FullImpl(Choice):
    """Full attention's two implementations of the same function (models/attention/full.py)."""

    sdpa = "sdpa"  # fused: torch's scaled_dot_product_attention
    math = "math"  # plain: softmax(q k^T / sqrt(d)) v, the n x n scores materialised (the LRA paper's baseline)


def full_attention_name(impl: FullImpl) -> str:
    """The model name of full attention with `impl`: conf/model/full.yaml's `name`, resolved, so that
    whoever looks for full attention's rows (the report's baselines) finds the names its runs record."""
    model = OmegaConf.load(CONF_DIR / "model" / "full.yaml")
    model.attention.impl = impl.value
    return str(model.name)


@dataclass
class AttentionConfig:
    """Fields every attention variant has; each variant subclasses this (models/attention)."""

    name: str = MISSING
    dropout: float = 0.0


@dataclass
class EncoderConfig:
    """Model-level structure, composable with every attention variant."""

    # ALBERT: every layer runs one block's parameters
    share_layers: bool = field(default=False, metadata=technique("shared layers"))
    # ALBERT: tokens embedded in this width, projected up to model.dim (None: dim)
    embed_dim: Optional[int] = field(default=None, metadata=technique("embed {}"))
    # Reformer: reversible residual blocks, activations recomputed in the backward pass
    reversible: bool = field(default=False, metadata=technique("reversible"))


@dataclass
class ModelConfig:
    name: str = MISSING
    num_layers: int = MISSING
    dim: int = MISSING
    num_heads: int = MISSING
    mlp_dim: int = MISSING
    dropout: float = 0.1
    pooling: Pooling = Pooling.cls
    positions: Positions = Positions.sinusoidal
    # width attention works at (queries, keys, values; heads of qkv_dim / num_heads); None: dim. LRA's qkv_dim
    qkv_dim: Optional[int] = None
    init: Init = Init.torch  # parameter initialisation: torch's defaults, or the LRA repository's (flax)
    attention_bias: bool = True  # biases in the attention's q, k, v and output projections (LRA: none)
    norm_eps: float = 1e-5  # epsilon of every LayerNorm of the encoder (LRA, flax: 1e-6)
    padding_mask: PaddingMask = PaddingMask.real  # which tokens are padding: the real ones, or LRA's id 0 too
    pool_padding: bool = False  # mean pooling over every position, padding included (LRA); False: real tokens
    dual_head: DualHead = DualHead.nli  # the two-tower head: [u, v, u * v, u - v], or LRA's [u, v] and two dense
    attention: AttentionConfig = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class TaskConfig:
    """Fields every task has; each task subclasses this (tasks/).

    The class-level facts say what the model embeds without loading any data (the bench needs them).
    """

    vocab_size: ClassVar[int]  # token ids are 0 .. vocab_size - 1
    towers: ClassVar[int] = 1  # sequences per example: 2 for a matching (two-tower) task
    # where sequences vary in length (so batches are padded to their longest): the shortest real length
    # as a fraction of max_len, lra-bench drawing real lengths uniformly from it to max_len; None: every
    # sequence is max_len tokens, never padded
    min_fill: ClassVar[Optional[float]] = None

    name: str = MISSING
    num_classes: int = MISSING
    max_len: int = MISSING
    # the max_len values `+sweep=lengths` trains at, comma-separated (e.g. "256,512,1024"); null: the
    # task has no length knob on this profile. The task's other lengths follow max_len in its YAML.
    lengths: Optional[str] = field(default=None, metadata=UNHASHED)


@dataclass
class DataConfig:
    root: str = "data"
    generate: bool = True


@dataclass
class OptimizerConfig:
    lr: float = MISSING
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: Schedule = Schedule.constant
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    # which parameters weight_decay shrinks: matrices (ndim >= 2) or all, decoupled and scaled by the lr either way
    decay: Decay = Decay.matrices


@dataclass
class TrainerConfig:
    batch_size: int = MISSING
    max_steps: int = MISSING
    eval_every: int = MISSING
    eval_batches: Optional[int] = None
    checkpoint_every: int = MISSING
    # micro-batches each step's batch_size examples are split into (each batch_size / accumulate)
    accumulate: int = field(default=1, metadata=technique("accumulate {}"))
    # the weights the test split is scored with: best (by validation accuracy) or last (the final ones)
    test_checkpoint: TestCheckpoint = TestCheckpoint.best
    log_every: int = field(default=10, metadata=UNHASHED)
    progress: bool = field(default=True, metadata=UNHASHED)


@dataclass
class HardwareConfig:
    name: str = MISSING
    paper_scale: bool = False  # whether task sizes are the LRA paper's (gpu) or shrunk (cpu); in every record
    device: Device = Device.cpu
    precision: Precision = Precision.fp32
    compile: bool = False
    threads: int = 0
    num_workers: int = field(default=0, metadata=UNHASHED)
    bench_batch_size: int = field(default=32, metadata=UNHASHED)
    cpu_memory_cap_mb: Optional[float] = None  # CPU: live tensor bytes above this are out of memory
    # every batch's length rounded up to a multiple of this, never past task.max_len, so that a compiled
    # model sees few shapes; null: task.max_len when compile is true (one shape), else 1 (the longest).
    # Padding is masked, so it changes no result: not part of the config hash
    pad_multiple: Optional[int] = field(default=None, metadata=UNHASHED)
    matmul_precision: MatmulPrecision = MatmulPrecision.highest  # fp32 matmuls: highest, high (TF32), medium


@dataclass
class ProtocolConfig:
    """Whose choices a run follows (conf/protocol/): `clean`, ours, or `lra`, the LRA repository's
    released code, quirks included. Each choice is a key of its own where it acts (model.init,
    optimizer.decay, ...); this names the set and, under lra, the repository's config file followed."""

    name: str = "clean"
    # the LRA repository's config file whose values this run follows (protocol=lra), e.g.
    # lra_benchmarks/image/configs/cifar10/local_base.py
    source: Optional[str] = field(default=None, metadata=UNHASHED)
    # why a run follows the task's base config although LRA ran the variant differently, or has no file for it
    note: Optional[str] = field(default=None, metadata=UNHASHED)


@dataclass
class DistillConfig:
    # a finished lra-train run directory of the same task: the model it tested teaches
    teacher: Optional[str] = field(default=None, metadata=technique("distilled"))
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft (teacher) term; 1 - alpha weighs the hard labels


@dataclass
class RunConfig:
    """What lra-train and lra-bench both compose: the model, task and hardware, and how it trains."""

    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    hardware: HardwareConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    seed: int = 0
    # run again even if the run directory holds this config's finished records
    force: bool = field(default=False, metadata=UNHASHED)


@dataclass
class TrainConfig(RunConfig):
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class BenchSettings:
    seq_lens: list[int] = MISSING
    modes: list[BenchMode] = MISSING
    batch_size: int = MISSING
    min_run_time: float = MISSING
    find_max_batch: bool = False
    max_batch: int = MISSING
    padding: BenchPadding = BenchPadding.task
    progress: bool = field(default=True, metadata=UNHASHED)


@dataclass
class BenchConfig(RunConfig):
    """lra-bench composes what lra-train does (model, task, hardware) and adds its own settings."""

    bench: BenchSettings = field(default_factory=BenchSettings)


@dataclass
class CompressConfig:
    """lra-compress: post-training compression of one finished lra-train run."""

    run: str = MISSING
    quantize: bool = True
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    finetune_steps: int = 50
    finetune_lr: float = 1e-4
    batch_size: int = 32
    min_run_time: float = 1.0
    progress: bool = field(default=True, metadata=UNHASHED)
    force: bool = field(default=False, metadata=UNHASHED)


@dataclass
class ReportConfig:
    runs: str = MISSING
    out: str = MISSING
    reference: Optional[str] = None


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
ConfigStore.instance().store(name="bench_schema", node=BenchConfig)
ConfigStore.instance().store(name="compress_schema", node=CompressConfig)
ConfigStore.instance().store(name="report_schema", node=ReportConfig)


@dataclass(frozen=True)
class TechniqueField:
    """A config key marked as a model-level technique (`technique` metadata)."""

    key: str  # a.b.c
    default: Any
    label: str

    def name(self, value: Any) -> str:
        """What a record calls the technique at `value`."""
        return self.label.format(value)


def schema_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf field of the dataclass `schema` and of the dataclasses it nests, as (a.b.c, field)."""
    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            yield from schema_fields(kind, f"{prefix}{item.name}.")
        else:
            yield f"{prefix}{item.name}", item


def hashed(item: dataclasses.Field) -> bool:
    """Whether a field is part of the config hash (all are, but those marked `UNHASHED`)."""
    return item.metadata.get("hashed", True)


ENTRY_SCHEMAS = (TrainConfig, BenchConfig, CompressConfig)  # what the runs that write records compose


@functools.cache
def unhashed_keys() -> tuple[str, ...]:
    """The keys of every entry point's config that the config hash leaves out (`UNHASHED` metadata)."""
    keys = {key for schema in ENTRY_SCHEMAS for key, item in schema_fields(schema) if not hashed(item)}
    return tuple(sorted(keys))


@functools.cache
def technique_fields() -> tuple[TechniqueField, ...]:
    """The keys marked as model-level techniques, in the order records name them."""
    found = {key: TechniqueField(key, item.default, item.metadata["technique"])
             for key, item in schema_fields(TrainConfig) if "technique" in item.metadata}
    return tuple(found.values())


# Integer arithmetic for the YAML files, e.g. a task's sizes that follow its max_len.
OmegaConf.register_new_resolver("lra.div", lambda a, b: int(a) // int(b), replace=True)
OmegaConf.register_new_resolver("lra.isqrt", lambda a: math.isqrt(int(a)), replace=True)
