"""Train-step speed and memory of every attention variant against full attention, across lengths.

    python -m runners.speedup [--lengths 512 1024 2048 4096] [--batch 2] [--out results/speedup_cpu]

The set-up of the LRA paper's Table 2: its text-task model (4 layers, dim 256, 4 heads of 64,
MLP 1024, dropout 0.1 but none on attention probabilities: with it, torch's CPU sdpa falls back to
the plain form) on a batch of random byte tokens at each length; one forward and backward
pass is timed (median after warm-up) and its peak live-tensor bytes counted. Each variant is
compared with full attention measured in the same run, in the plain form (the paper's baseline)
and fused (sdpa). Writes <out>.csv (one row per variant and length) and <out>.md (speed-ups,
memory ratios, and the length from which each variant beats the fused form).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tqdm import tqdm

import tasks  # noqa: F401  (registers the task schemas the train config names)
from lra.cli import reported
from lra.config import CONF_DIR
from lra.measure import LiveTensorBytes, median_seconds
from lra.records import atomic_write
from models.attention import list_attention
from models.encoder import Classifier

# LRA's text-task model (lra_benchmarks/text_classification/configs/base_tc_config.py), mean-pooled
# so that the sequence is exactly the measured length.
LRA_TEXT = ["model.num_layers=4", "model.dim=256", "model.num_heads=4", "model.mlp_dim=1024",
            "model.dropout=0.1", "model.attention.dropout=0.0", "model.pooling=mean"]
VOCAB, CLASSES = 256, 2
PLAIN, FUSED = "full-math", "full-sdpa"


def model_configs(extra: list[str]) -> list[DictConfig]:
    """The model config of every registered variant, full attention in both forms, then the `extra`
    rows (each a string of overrides), as composed. A row whose model name is already taken is
    named by its overrides too."""
    rows = ["model=full model.attention.impl=math", "model=full model.attention.impl=sdpa",
            *(f"model={name}" for name in list_attention() if name != "full")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = [compose(config_name="train", overrides=[*row.split(), *LRA_TEXT]).model for row in rows + extra]
    for config, row in zip(configs[len(rows):], extra):
        if config.name in {c.name for c in configs if c is not config}:
            config.name += f" ({' '.join(o for o in row.split() if not o.startswith('model='))})"
    return configs


def measure(model_cfg: DictConfig, length: int, batch: int, min_run_time: float) -> dict:
    """Seconds and peak bytes of one forward and backward pass at `length`."""
    torch.manual_seed(0)
    model = Classifier(model_cfg, VOCAB, CLASSES, max_len=length).train()
    tokens = torch.randint(VOCAB, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.bool)
    labels = torch.randint(CLASSES, (batch,))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(tokens, mask), labels).backward()

    seconds = median_seconds(step, min_run_time=min_run_time)
    with LiveTensorBytes() as tracker:
        step()
    return {"model": model_cfg.name, "seq_len": length, "batch_size": batch, "seconds": seconds,
            "tokens_per_s": batch * length / seconds, "peak_memory_mb": tracker.peak / 2**20}


def crossover(seconds: pd.DataFrame) -> pd.Series:
    """Per model (rows of `seconds`, columns the lengths), the shortest measured length from which it
    stays faster than fused full attention at every longer length; "none" if it never does."""
    faster = seconds.loc[FUSED] / seconds > 1
    from_here_on = faster.iloc[:, ::-1].cummin(axis=1).iloc[:, ::-1]
    return from_here_on.idxmax(axis=1).where(from_here_on.any(axis=1), other="none").rename("seq_len")


def summarise(frame: pd.DataFrame) -> str:
    """Markdown: speed-up and memory ratio against both full-attention forms, and the crossover."""
    seconds = frame.pivot(index="model", columns="seq_len", values="seconds")
    memory = frame.pivot(index="model", columns="seq_len", values="peak_memory_mb")
    parts = [
        ("Speed-up against plain full attention (the LRA paper's baseline)", seconds.loc[PLAIN] / seconds),
        ("Speed-up against fused full attention (sdpa)", seconds.loc[FUSED] / seconds),
        ("Peak memory relative to plain full attention", memory / memory.loc[PLAIN]),
        ("Peak memory relative to fused full attention", memory / memory.loc[FUSED]),
        ("Seconds per forward and backward pass", seconds),
        ("Peak live-tensor MB of one forward and backward pass", memory),
        ("Shortest length from which each variant beats fused full attention", crossover(seconds)),
    ]
    return "\n".join(f"## {title}\n\n{table.to_markdown(floatfmt='.3f')}\n" for title, table in parts)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m runners.speedup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per measurement")
    parser.add_argument("--extra", nargs="*", default=[], metavar="OVERRIDES",
                        help='more rows, each a quoted list of overrides, e.g. "model=performer model.attention.num_features=64"')
    parser.add_argument("--out", type=Path, default=Path("results/speedup_cpu"), help="path without suffix")
    args = parser.parse_args()
    with reported(parser.prog):
        configs = model_configs(args.extra)
    rows = []
    with tqdm(total=len(configs) * len(args.lengths), desc="forward+backward") as bar:
        for model_cfg in configs:
            for length in args.lengths:
                bar.set_postfix(model=model_cfg.name, seq_len=length)
                rows.append(measure(model_cfg, length, args.batch, args.min_run_time))
                bar.update()
    frame = pd.DataFrame(rows)
    header = (f"# Forward and backward pass, LRA text model, batch {args.batch}\n\n"
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 on the CPU.\n\n")
    summary = summarise(frame)
    atomic_write(args.out.with_suffix(".csv"), lambda file: frame.to_csv(file, index=False))
    atomic_write(args.out.with_suffix(".md"), lambda file: file.write(header + summary))
    print(summary)


if __name__ == "__main__":
    cli()
