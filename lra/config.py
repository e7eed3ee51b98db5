"""Structured-config schema of every entry point, registered in Hydra's ConfigStore.

The YAML files under conf/ hold the values; these dataclasses hold the types, so a typo or a
wrong-typed override fails at start-up with the key's full name. Variant- and task-specific
fields live in subclasses registered next to their code (models/attention, tasks).

Field metadata says what a field is beyond its type, so that no list of keys is kept elsewhere:
`UNHASHED` marks a key that changes how a run is shown, not what it computes (left out of the
config hash, lra.records); `technique(label)` marks a model-level technique, named in a record
by `label` (formatted with the value) when its value is not the default; `at_least`, `above` and
`between` give a numeric key its range, which `check_ranges` enforces at start-up (a list's
elements one by one). Metadata dicts combine with `|`, e.g. `metadata=UNHASHED | at_least(1)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from lra.errors import LRAError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
UNHASHED = {"hashed": False}  # field metadata: not part of the config hash
Number = Union[int, float]


def technique(label: str) -> dict[str, str]:
    """Field metadata of a model-level technique, named `label` (with `{}`: the field's value)."""
    return {"technique": label}


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: from `low` (excluded if `low_open`) up to `high` (excluded
    if `high_open`; None: no upper bound)."""

    low: Number
    high: Optional[Number] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Number) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above_low and below_high

    def __str__(self) -> str:
        if self.high is None:
            return f"greater than {self.low}" if self.low_open else f"at least {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def check(self, key: str, value: Any, nullable: bool = False) -> None:
        """LRAError `key=value: must be <range>` unless `value` is in range, a list's element by element
        (`key[i]=...`). Null passes: OmegaConf refuses it where the schema has no Optional, and
        `nullable` (an Optional field) adds `, or null` to the line."""
        if isinstance(value, (list, tuple, ListConfig)):
            for index, element in enumerate(value):
                self.check(f"{key}[{index}]", element)
        elif value is not None and value not in self:
            raise LRAError(f"{key}={value}: must be {self}{', or null' if nullable else ''}")


def at_least(low: Number) -> dict[str, Range]:
    """Field metadata of a key that must be `low` or more."""
    return {"range": Range(low)}


def above(low: Number) -> dict[str, Range]:
    """Field metadata of a key that must be more than `low`."""
    return {"range": Range(low, low_open=True)}


def between(low: Number, high: Number, *, low_open: bool = False, high_open: bool = False) -> dict[str, Range]:
    """Field metadata of a key that must lie between `low` and `high` (each included unless open)."""
    return {"range": Range(low, high, low_open, high_open)}


SEED = between(0, 2**32 - 1)  # every seed: numpy's (np.random.seed, RandomState) accepts no other
SHARE = between(0, 1, high_open=True)  # a share dropped (dropout) or zeroed (sparsity): 1 would leave nothing


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
    dropout: float = field(default=0.0, metadata=SHARE)


@dataclass
class EncoderConfig:
    """Model-level structure, composable with every attention variant."""

    # ALBERT: every layer runs one block's parameters
    share_layers: bool = field(default=False, metadata=technique("shared layers"))
    # ALBERT: tokens embedded in this width, projected up to model.dim (None: dim)
    embed_dim: Optional[int] = field(default=None, metadata=technique("embed {}") | at_least(1))
    # Reformer: reversible residual blocks, activations recomputed in the backward pass
    reversible: bool = field(default=False, metadata=technique("reversible"))


@dataclass
class ModelConfig:
    name: str = MISSING
    num_layers: int = field(default=MISSING, metadata=at_least(1))
    dim: int = field(default=MISSING, metadata=at_least(1))
    num_heads: int = field(default=MISSING, metadata=at_least(1))
    mlp_dim: int = field(default=MISSING, metadata=at_least(1))
    dropout: float = field(default=0.1, metadata=SHARE)
    pooling: Pooling = Pooling.cls
    positions: Positions = Positions.sinusoidal
    # width attention works at (queries, keys, values; heads of qkv_dim / num_heads); None: dim. LRA's qkv_dim
    qkv_dim: Optional[int] = field(default=None, metadata=at_least(1))
    init: Init = Init.torch  # parameter initialisation: torch's defaults, or the LRA repository's (flax)
    attention_bias: bool = True  # biases in the attention's q, k, v and output projections (LRA: none)
    norm_eps: float = field(default=1e-5, metadata=above(0))  # epsilon of every LayerNorm (LRA, flax: 1e-6)
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
    num_classes: int = field(default=MISSING, metadata=at_least(2))
    max_len: int = field(default=MISSING, metadata=at_least(1))
    # the max_len values `+sweep=lengths` trains at, comma-separated (e.g. "256,512,1024"); null: the
    # task has no length knob on this profile. The task's other lengths follow max_len in its YAML.
    lengths: Optional[str] = field(default=None, metadata=UNHASHED)

    def check(self) -> None:
        """LRAError naming the first `task.` key outside its range; a task whose keys must also fit
        together (a length that is an image's pixels, say) adds those checks. Run before anything is
        written by every lra-train run (lra.engine.training), and by the loaders of such tasks."""
        check_ranges(OmegaConf.structured(self), "task.")


@dataclass
class DataConfig:
    root: str = "data"
    generate: bool = True


@dataclass
class OptimizerConfig:
    lr: float = field(default=MISSING, metadata=above(0))
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    beta1: float = field(default=0.9, metadata=between(0, 1, high_open=True))
    beta2: float = field(default=0.999, metadata=between(0, 1, high_open=True))
    eps: float = field(default=1e-8, metadata=above(0))
    schedule: Schedule = Schedule.constant
    warmup_steps: int = field(default=0, metadata=at_least(0))
    grad_clip: Optional[float] = field(default=None, metadata=above(0))  # the gradient norm clipped to; null: none
    # which parameters weight_decay shrinks: matrices (ndim >= 2) or all, decoupled and scaled by the lr either way
    decay: Decay = Decay.matrices


@dataclass
class TrainerConfig:
    batch_size: int = field(default=MISSING, metadata=at_least(1))
    max_steps: int = field(default=MISSING, metadata=at_least(1))
    eval_every: int = field(default=MISSING, metadata=at_least(1))
    eval_batches: Optional[int] = field(default=None, metadata=at_least(1))
    checkpoint_every: int = field(default=MISSING, metadata=at_least(1))
    # micro-batches each step's batch_size examples are split into (each batch_size / accumulate)
    accumulate: int = field(default=1, metadata=technique("accumulate {}") | at_least(1))
    # the weights the test split is scored with: best (by validation accuracy) or last (the final ones)
    test_checkpoint: TestCheckpoint = TestCheckpoint.best
    log_every: int = field(default=10, metadata=UNHASHED | at_least(1))
    progress: bool = field(default=True, metadata=UNHASHED)


@dataclass
class HardwareConfig:
    name: str = MISSING
    paper_scale: bool = False  # whether task sizes are the LRA paper's (gpu) or shrunk (cpu); in every record
    device: Device = Device.cpu
    precision: Precision = Precision.fp32
    compile: bool = False
    threads: int = field(default=0, metadata=at_least(0))  # torch's CPU threads; 0: torch's default
    num_workers: int = field(default=0, metadata=UNHASHED | at_least(0))
    bench_batch_size: int = field(default=32, metadata=UNHASHED | at_least(1))
    # CPU: live tensor bytes above this are out of memory
    cpu_memory_cap_mb: Optional[float] = field(default=None, metadata=above(0))
    # every batch's length rounded up to a multiple of this, never past task.max_len, so that a compiled
    # model sees few shapes; null: task.max_len when compile is true (one shape), else 1 (the longest).
    # Padding is masked, so it changes no result: not part of the config hash
    pad_multiple: Optional[int] = field(default=None, metadata=UNHASHED | at_least(1))
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
    temperature: float = field(default=2.0, metadata=above(0))
    # weight of the soft (teacher) term; 1 - alpha weighs the hard labels
    alpha: float = field(default=0.5, metadata=between(0, 1))


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
    seed: int = field(default=0, metadata=SEED)
    # run again even if the run directory holds this config's finished records
    force: bool = field(default=False, metadata=UNHASHED)


@dataclass
class TrainConfig(RunConfig):
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class BenchSettings:
    seq_lens: list[int] = field(default=MISSING, metadata=at_least(1))
    modes: list[BenchMode] = MISSING
    batch_size: int = field(default=MISSING, metadata=at_least(1))
    min_run_time: float = field(default=MISSING, metadata=above(0))
    find_max_batch: bool = False
    max_batch: int = field(default=MISSING, metadata=at_least(1))
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
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9], metadata=SHARE)
    finetune_steps: int = field(default=50, metadata=at_least(0))
    finetune_lr: float = field(default=1e-4, metadata=above(0))
    batch_size: int = field(default=32, metadata=at_least(1))
    min_run_time: float = field(default=1.0, metadata=above(0))
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


def field_range(schema: type, name: str) -> Optional[Range]:
    """The range of field `name` of the dataclass `schema`: its own, or where a subclass gives the
    field a new default alone, the range of the base class that declared it."""
    for base in schema.__mro__:
        item = getattr(base, "__dataclass_fields__", {}).get(name)
        if item is not None and "range" in item.metadata:
            return item.metadata["range"]
    return None


@functools.cache
def ranged_fields(schema: type) -> tuple[tuple[str, Range, bool], ...]:
    """(name, range, whether it may be null) of each field of the dataclass `schema` with a range."""
    hints = typing.get_type_hints(schema)
    found = ((item.name, field_range(schema, item.name), hints[item.name]) for item in dataclasses.fields(schema))
    return tuple((name, bounds, type(None) in typing.get_args(kind)) for name, bounds, kind in found
                 if bounds is not None)


def check_values(schema: type, values: Mapping[str, Any], key: Callable[[str], str] = str) -> None:
    """LRAError naming, as `key(field)`, the first of `values` (by field name) outside the range of
    its field in the dataclass `schema`; a field without a range, or without a value, passes."""
    for name, bounds, nullable in ranged_fields(schema):
        if name in values:
            bounds.check(key(name), values[name], nullable)


def check_ranges(node: DictConfig, prefix: str = "") -> None:
    """LRAError naming the full key (`prefix` + its path) of the first value under `node` outside
    its field's range. Each node's dataclass is the one OmegaConf typed it with, so the fields of a
    variant's or a task's own schema are checked too; a missing value (`???`) is left to whatever
    needs it."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        values = {name: node[name] for name, _, _ in ranged_fields(schema)
                  if name in node and not OmegaConf.is_missing(node, name)}
        check_values(schema, values, lambda name: prefix + name)
    for name in node:
        if OmegaConf.is_interpolation(node, name) or OmegaConf.is_missing(node, name):
            continue
        child = node[name]
        if isinstance(child, DictConfig):
            check_ranges(child, f"{prefix}{name}.")


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
