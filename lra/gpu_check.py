"""`make gpu-check`: validate a GPU machine in minutes, or rehearse the whole check on the CPU.

Checks, in order, each a row of a one-screen summary (and of `summary.md`, `summary.json` in the
output directory), each given what is left of the time budget:

1. every attention variant on the device against the CPU, in fp32 and under bf16 autocast: the
   classifier's outputs and gradients, finite, close to the CPU's, and blind to padded tokens;
2. which SDPA backends accept the inputs full attention passes them (no mask, and the key padding
   mask, at a length that is not a multiple of 8);
3. a bf16 smoke run of every task on the gpu profile (lra-train, a handful of steps on small data in
   each real layout: generated, or written by tasks/samples.py);
4. lra-bench on the LRA text model at batch 32, 1K-16K tokens, for full attention (both forms) and
   the linear family, and the memory measure its records carry (CUDA's on a GPU);
5. the h200 profile (torch.compile) on one ListOps run, if time is left.

The runs are the entry points themselves, in processes of their own (`python -m runners.train`), so
the check exercises what users run. A dry run (GPU_CHECK_DRY=1) does all of it on the CPU with
small models and lengths, so that the check itself is tested where no GPU is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra.config import CONF_DIR
from lra.memory import BY_DEVICE
from lra.records import read_records
from models.encoder import Classifier
from tasks import TASKS, task_config
from tasks.samples import write_aan, write_cifar, write_imdb

REPO = CONF_DIR.parent
BUDGET_S = 540.0  # the whole check, under the 10 minutes it promises
STATUS_OK, STATUS_FAIL, STATUS_SKIPPED = "ok", "FAIL", "skipped"
BENCH_MODELS = "full,full_math,linear,performer"  # full attention in both forms, and the linear family
TINY = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=32", "model.qkv_dim=null",
        "trainer.batch_size=4"]  # the dry run's model and batch, on every task


@dataclass
class Check:
    """One row of the summary."""

    name: str
    status: str  # ok, FAIL or skipped
    detail: str
    seconds: float


@dataclass
class Setting:
    """Where the check runs and what it writes."""

    out: Path
    dry: bool  # on the CPU, small: a rehearsal of the check
    budget_s: float = BUDGET_S

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.dry else "cuda")

    def hardware(self, profile: str = "gpu") -> list[str]:
        """The overrides of a run on `profile`: on the CPU with a tiny model when dry."""
        return [f"hardware={profile}", *(["hardware.device=cpu", "hardware.compile=false", *TINY] if self.dry else [])]


def composed(*overrides: str) -> DictConfig:
    """lra-train's config with `overrides`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def padded_batch(vocab_size: int, length: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask (True at real tokens) with real lengths from the full length down to a third."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, vocab_size, (batch, length), generator=generator)
    lengths = torch.linspace(length, length // 3, batch).long()
    return tokens, torch.arange(length) < lengths[:, None]


def compare_variant(model_name: str, device: torch.device) -> str:
    """The classifier of `model_name` on `device` against the same weights on the CPU: fp32 outputs and
    gradients close, bf16 outputs close to fp32's, and outputs blind to the padded tokens. '' if all hold."""
    cfg = composed(f"model={model_name}", "task=listops", "task.max_len=200", "model.dim=64", "model.num_heads=4",
                   "model.num_layers=1", "model.dropout=0.0", "model.attention.dropout=0.0")
    task = task_config(cfg.task)
    torch.manual_seed(0)
    cpu = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len).eval()
    moved = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len).eval()
    moved.load_state_dict(cpu.state_dict())
    moved.to(device)
    tokens, mask = padded_batch(task.vocab_size, task.max_len)
    expected, grads = forward_backward(cpu, tokens, mask)
    got, device_grads = forward_backward(moved, tokens.to(device), mask.to(device))
    problems = []
    if not torch.allclose(got.cpu(), expected, atol=1e-3, rtol=1e-3):
        problems.append(f"fp32 outputs differ by {(got.cpu() - expected).abs().max():.2g}")
    worst = max((device_grads[name].cpu() - grad).abs().max().item() / (grad.abs().max().item() + 1e-6)
                for name, grad in grads.items())
    if worst > 1e-2:
        problems.append(f"fp32 gradients differ (relative {worst:.2g})")
    with torch.autocast(device.type, dtype=torch.bfloat16):
        low = moved(tokens.to(device), mask.to(device)).float().cpu()
    if not torch.isfinite(low).all() or (low - expected).abs().max() > 0.1 * (expected.abs().max() + 1):
        problems.append(f"bf16 outputs off by {(low - expected).abs().max():.2g}")
    scrambled = torch.where(mask, tokens, (tokens + 7) % task.vocab_size).to(device)
    with torch.no_grad():
        blind = moved(scrambled, mask.to(device)).cpu()
    if not torch.allclose(blind, got.detach().cpu(), atol=1e-4):
        problems.append("outputs change with padded tokens")
    return "; ".join(problems)


def forward_backward(model: Classifier, tokens: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits of a batch, and the gradients of their sum of squares."""
    model.zero_grad()
    logits = model(tokens, mask)
    logits.square().sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def check_variants(setting: Setting) -> str:
    """Check 1: every variant (conf/model/) on the device against the CPU."""
    names = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
    failed = {name: problem for name in names if (problem := compare_variant(name, setting.device))}
    if failed:
        raise AssertionError("; ".join(f"{name}: {problem}" for name, problem in failed.items()))
    return f"{len(names)} variants: fp32 and bf16 outputs, gradients, padding"


def check_sdpa_backends(setting: Setting) -> str:
    """Check 2: the SDPA backends that run full attention's inputs: without a mask, and with its key
    padding mask (batch, 1, 1, keys), at 1001 tokens (not a multiple of 8), bf16 on a GPU."""
    dtype = torch.float32 if setting.dry else torch.bfloat16
    q = torch.randn(2, 4, 1001, 64, device=setting.device, dtype=dtype)
    mask = (torch.arange(1001, device=setting.device) < torch.tensor([[1001], [600]], device=setting.device))
    accepted = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        runs = [kind for kind, attn_mask in (("no mask", None), ("mask", mask[:, None, None, :]))
                if sdpa_runs(backend, q, attn_mask)]
        accepted.append(f"{backend.name.lower().removesuffix('_attention')}: {', '.join(runs) or 'none'}")
    return "; ".join(accepted)


def sdpa_runs(backend: SDPBackend, q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether `backend` alone runs scaled_dot_product_attention on these inputs."""
    try:
        with sdpa_kernel([backend]):
            F.scaled_dot_product_attention(q, q, q, attn_mask=attn_mask)
        return True
    except RuntimeError:
        return False


def run_entry(module: str, args: list[str], log: Path, timeout_s: float) -> None:
    """`python -m module args` from the repository, its output in `log`; AssertionError naming the log
    and its last line if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, stdout=stream,
                                stderr=subprocess.STDOUT, timeout=max(timeout_s, 1), env=os.environ.copy())
    if result.returncode:
        lines = log.read_text().strip().splitlines() or ["no output"]
        raise AssertionError(f"{module} exited {result.returncode}: {lines[-1][:160]} ({log})")


def task_data(task: str, root: Path, dry: bool) -> list[str]:
    """Small data for `task` under `root`, in its real layout; the overrides that read it."""
    if task == "text":
        write_imdb(root / "imdb")
    elif task == "image":
        write_cifar(root / "cifar10")
    elif task == "retrieval":
        write_aan(root / "tsv_data")
    sizes = {"listops": ["task.generate.train=200", "task.generate.val=32", "task.generate.test=32",
                         "task.dir=listops-check"],
             "pathfinder": ["task.generate.count=96"], "pathx": ["task.generate.count=48"],
             "recall": ["task.examples.train=256", "task.examples.val=32", "task.examples.test=32"]}
    shrunk = {"listops": ["task.max_len=256", "task.generate.min_len=32", "task.generate.max_len=256"],
              "text": ["task.max_len=256"], "retrieval": ["task.max_len=256"], "pathx": ["model=linformer"]}
    return [f"data.root={root}", *sizes.get(task, []), *(shrunk.get(task, []) if dry else [])]


def check_tasks(setting: Setting, deadline: float) -> str:
    """Check 3: a few bf16 steps of every task through lra-train on the gpu profile."""
    steps = ["trainer.max_steps=4", "trainer.eval_every=4", "trainer.checkpoint_every=4", "trainer.eval_batches=2",
             "trainer.progress=false"]
    for task in TASKS.names():
        runs = setting.out / "runs" / task
        args = [f"task={task}", *setting.hardware(), *task_data(task, setting.out / "data", setting.dry), *steps,
                f"hydra.run.dir={runs}"]
        run_entry("runners.train", args, setting.out / "logs" / f"train_{task}.log", deadline - time.monotonic())
        [record] = read_records(runs / "records.jsonl")
        if record["status"] != "ok" or record["precision"] != "bf16":
            raise AssertionError(f"{task}: status {record['status']}, precision {record['precision']}")
    return f"{len(TASKS.names())} tasks trained 4 bf16 steps on the gpu profile"


def check_bench(setting: Setting, deadline: float) -> str:
    """Check 4: lra-bench of full attention and the linear family on the text model, and its memory measure."""
    lengths = "[64,128]" if setting.dry else "[1024,2048,4096,8192,16384]"
    sweep = setting.out / "bench"
    args = ["-m", f"model={BENCH_MODELS}", "task=text", *setting.hardware(), f"bench.seq_lens={lengths}",
            f"bench.batch_size={2 if setting.dry else 32}", "bench.min_run_time=0.2", "bench.progress=false",
            "hydra.callbacks.sweep.report=false", f"hydra.sweep.dir={sweep}"]
    run_entry("runners.bench", args, setting.out / "logs" / "bench.log", deadline - time.monotonic())
    records = [record for path in sweep.rglob("records.jsonl") for record in read_records(path)]
    measures = {record["metrics"].get("memory_measure") for record in records if record["status"] == "ok"}
    if measures != {BY_DEVICE[setting.device.type]}:
        raise AssertionError(f"memory measured as {sorted(map(str, measures))}, not {BY_DEVICE[setting.device.type]}")
    statuses = sorted({f"{record['model']} {record['seq_len']}: {record['status']}" for record in records
                       if record["status"] != "ok"})
    ok = sum(record["status"] == "ok" for record in records)
    failed = f"; {', '.join(statuses)}" if statuses else ""
    return f"{ok} of {len(records)} points ok, memory {measures.pop()}{failed}"


def check_compile(setting: Setting, deadline: float) -> str:
    """Check 5: one ListOps run on the h200 profile (torch.compile), if time is left for it."""
    if setting.dry:
        return STATUS_SKIPPED + ": a dry run (compiling needs the GPU machine's toolchain)"
    runs = setting.out / "runs" / "h200"
    args = ["task=listops", "hardware=h200", *task_data("listops", setting.out / "data", False), "trainer.max_steps=20",
            "trainer.eval_every=20", "trainer.checkpoint_every=20", "trainer.eval_batches=2", "trainer.progress=false",
            f"hydra.run.dir={runs}"]
    run_entry("runners.train", args, setting.out / "logs" / "train_h200.log", deadline - time.monotonic())
    [record] = read_records(runs / "records.jsonl")
    return f"compiled run: {record['status']}, {record['metrics'].get('steps_per_s', 0):.2f} steps/s"


def timed(name: str, work: Callable[[], str], deadline: float) -> Check:
    """Run one check: ok with what it found, FAIL with why (one line), or skipped when no time is left."""
    started = time.monotonic()
    if started >= deadline:
        return Check(name, STATUS_SKIPPED, "no time left in the budget", 0.0)
    try:
        detail = work()
        status = STATUS_SKIPPED if detail.startswith(STATUS_SKIPPED) else STATUS_OK
    except (AssertionError, RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        status, detail = STATUS_FAIL, " ".join(str(error).split()) or type(error).__name__
    return Check(name, status, detail, time.monotonic() - started)


def run_checks(setting: Setting) -> list[Check]:
    """Every check in order, within the budget."""
    deadline = time.monotonic() + setting.budget_s
    checks = [
        ("variants vs CPU", lambda: check_variants(setting)),
        ("SDPA backends", lambda: check_sdpa_backends(setting)),
        ("task smoke (bf16)", lambda: check_tasks(setting, deadline)),
        ("bench + memory", lambda: check_bench(setting, deadline)),
        ("h200 compile", lambda: check_compile(setting, deadline)),
    ]
    return [timed(name, work, deadline) for name, work in checks]


def summary(checks: list[Check], setting: Setting) -> str:
    """The one-screen summary: the machine, then a line per check."""
    machine = "dry run on the CPU" if setting.dry else torch.cuda.get_device_name()
    lines = [f"gpu-check: {machine}, torch {torch.__version__}, {sum(c.seconds for c in checks):.0f} s", ""]
    lines += [f"{c.status:8} {c.name:18} {c.seconds:6.1f} s  {c.detail[:200]}" for c in checks]
    return "\n".join(lines)


def write_summary(checks: list[Check], setting: Setting) -> str:
    """The summary, also written as summary.md and summary.json in the output directory."""
    text = summary(checks, setting)
    setting.out.mkdir(parents=True, exist_ok=True)
    (setting.out / "summary.md").write_text(f"```\n{text}\n```\n")
    (setting.out / "summary.json").write_text(json.dumps([asdict(check) for check in checks], indent=1) + "\n")
    return text
