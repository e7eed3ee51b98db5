"""Structured-config schema of every entry point, registered in Hydra's ConfigStore.

The YAML files under conf/ hold the values; these dataclasses hold the types, so a typo or a
wrong-typed override fails at start-up with the key's full name. Variant- and task-specific
fields live in subclasses registered next to their code (models/attention, tasks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Choice(Enum):
    """A config value out of a fixed set; interpolates (`${...}`) as its bare value."""

    def __str__(self) -> str:
        return str(self.value)


class Pooling(Choice):
    cls = "cls"
    mean = "mean"


class Positions(Choice):
    sinusoidal = "sinusoidal"
    learned = "learned"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16
    fp16 = "fp16"  # autocast to float16, the loss scaled by a gradient scaler


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


class BenchMode(Choice):
    train = "train"  # one training step: forward, backward, optimizer
    infer = "infer"  # one forward pass without gradients


class Schedule(Choice):
    constant = "constant"  # warm-up, then constant
    cosine = "cosine"  # warm-up, then cosine decay to zero at max_steps
    rsqrt = "rsqrt"  # LRA's "constant * linear_warmup * rsqrt_decay"


@dataclass
class AttentionConfig:
    """Fields every attention variant has; each variant subclasses this (models/attention)."""

    name: str = MISSING
    dropout: float = 0.0


@dataclass
class EncoderConfig:
    """Model-level structure, composable with every attention variant."""

    share_layers: bool = False  # ALBERT: every layer runs one block's parameters
    embed_dim: Optional[int] = None  # ALBERT: tokens embedded in this width, projected up to model.dim (None: dim)
    reversible: bool = False  # Reformer: reversible residual blocks, activations recomputed in the backward pass


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
    attention: AttentionConfig = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class TaskConfig:
    """Fields every task has; each task subclasses this (tasks/).

    The class-level facts say what the model embeds without loading any data (the bench needs them).
    """

    vocab_size: ClassVar[int]  # token ids are 0 .. vocab_size - 1
    towers: ClassVar[int] = 1  # sequences per example: 2 for a matching (two-tower) task

    name: str = MISSING
    num_classes: int = MISSING
    max_len: int = MISSING


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


@dataclass
class TrainerConfig:
    batch_size: int = MISSING
    max_steps: int = MISSING
    eval_every: int = MISSING
    eval_batches: Optional[int] = None
    checkpoint_every: int = MISSING
    accumulate: int = 1  # micro-batches each step's batch_size examples are split into (each batch_size / accumulate)
    log_every: int = 10
    progress: bool = True


@dataclass
class HardwareConfig:
    name: str = MISSING
    paper_scale: bool = False  # whether task sizes are the LRA paper's (gpu) or shrunk (cpu); in every record
    device: Device = Device.cpu
    precision: Precision = Precision.fp32
    compile: bool = False
    threads: int = 0
    num_workers: int = 0
    bench_batch_size: int = 32
    cpu_memory_cap_mb: Optional[float] = None  # CPU: live tensor bytes above this are out of memory


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a finished lra-train run directory of the same task: its best checkpoint teaches
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
    seed: int = 0
    force: bool = False  # run again even if the run directory holds this config's finished records


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
    progress: bool = True


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
    progress: bool = True
    force: bool = False


@dataclass
class ReportConfig:
    runs: str = MISSING
    out: str = MISSING
    reference: Optional[str] = None


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
ConfigStore.instance().store(name="bench_schema", node=BenchConfig)
ConfigStore.instance().store(name="compress_schema", node=CompressConfig)
ConfigStore.instance().store(name="report_schema", node=ReportConfig)
