"""`lra-data`: generate a dataset in the layout of the LRA release, one subcommand per dataset,
and check ListOps files (generated or from the release).

    lra-data listops --out data/listops-1000 [--train N ...]
    lra-data pathfinder --out data/pathfinder32 [--resolution 32 --difficulty hard --count N --seed S ...]
    lra-data check-listops data/listops-1000/basic_test.tsv [FILE ...]

Bad input, or a file system that refuses (no permission, a full disk, `--out` naming a file), ends in
one line, `lra-data: error: ...` naming the path, and exit code 2; Ctrl-C in one line and exit status 130.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from lra.cli import CommandParser, run_command
from lra.config import Range, check_values
from tasks import listops, pathfinder, pathfinder_draw

PROG = "lra-data"


def _option(setting: str) -> str:
    """The option of a setting: --min-len for min_len."""
    return f"--{setting.replace('_', '-')}"


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _add_listops(commands: argparse._SubParsersAction) -> None:
    """`lra-data listops`: LRA's ListOps generator, an option per generator setting, LRA's as defaults."""
    parser = commands.add_parser(
        "listops", help="ListOps (basic_{train,val,test}.tsv)",
        description="Generate ListOps as LRA did (seeded), in the layout of the LRA release.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for basic_{train,val,test}.tsv and generator.json")
    for setting in fields(listops.ListOpsSettings):
        parser.add_argument(_option(setting.name), type=int, default=setting.default,
                            help=setting.metadata["help"])
    _add_progress(parser)
    parser.set_defaults(run=_run_listops)


def _run_listops(args: argparse.Namespace) -> str:
    """Write the ListOps release; return the line that says what was written where."""
    settings = {setting.name: getattr(args, setting.name) for setting in fields(listops.ListOpsSettings)}
    listops.check_settings(settings, _option)
    listops.write_release(args.out, **settings, progress=args.progress)
    files = ", ".join([*listops.SPLIT_FILES.values(), listops.SETTINGS_FILE])
    return (f"wrote ListOps {args.train}/{args.val}/{args.test} train/val/test examples "
            f"({args.min_len} < length < {args.max_len}, seed {args.seed}) to {args.out}: {files}")


def _add_check_listops(commands: argparse._SubParsersAction) -> None:
    """`lra-data check-listops`: every label of ListOps split files is the value of its expression."""
    parser = commands.add_parser(
        "check-listops", help="check that every label of ListOps files is its expression's value",
        description="Evaluate the expression of every row of ListOps split files (Source<TAB>Target, "
                    "generated or from the LRA release) and compare it with the row's label; "
                    "stop at the first row where they differ.")
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE",
                        help="split files, e.g. data/listops-1000/basic_test.tsv")
    _add_progress(parser)
    parser.set_defaults(run=_run_check_listops)


def _run_check_listops(args: argparse.Namespace) -> str:
    """Check the files in order; return the line that says how many rows checked."""
    rows = sum(listops.check_split(path, progress=args.progress) for path in args.files)
    return (f"all {rows} rows of {', '.join(map(str, args.files))} check: "
            "every label is the value of its expression")


def _add_pathfinder(commands: argparse._SubParsersAction) -> None:
    """`lra-data pathfinder`: Pathfinder images as LRA drew them, at one resolution and difficulty;
    the defaults are those of task=pathfinder, so that what it draws is what the task reads."""
    task = pathfinder.PathfinderConfig()
    parser = commands.add_parser(
        "pathfinder", help="Pathfinder (<difficulty folder>/imgs/<batch>/sample_<i>.png, metadata/<batch>.npy)",
        description="Draw Pathfinder images with LRA's settings (seeded), in the layout of the LRA release.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for the difficulty folder (e.g. curv_contour_length_14)")
    parser.add_argument("--resolution", type=int, choices=pathfinder_draw.RESOLUTIONS, default=task.resolution,
                        help="image width and height in pixels")
    parser.add_argument("--difficulty", choices=list(pathfinder_draw.DIFFICULTIES),
                        default=task.difficulty.value,
                        help="contour length: easy 6, intermediate 9, hard 14 paddles")
    parser.add_argument("--count", type=int, default=task.generate.count, help="images, half of them connected")
    parser.add_argument("--seed", type=int, default=task.generate.seed, help="seed of the generator")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing the images (none: one per CPU)")
    _add_progress(parser)
    parser.set_defaults(run=_run_pathfinder)


def _run_pathfinder(args: argparse.Namespace) -> str:
    """Write the Pathfinder images; return the line that says what was written where."""
    check_values(pathfinder.PathfinderGenerate, {"count": args.count, "seed": args.seed}, _option)
    Range(1).check("--workers", args.workers)  # None (the option left out): one per CPU
    folder = pathfinder_draw.write_release(args.out, resolution=args.resolution, difficulty=args.difficulty,
                                           count=args.count, seed=args.seed, workers=args.workers,
                                           progress=args.progress)
    return (f"wrote Pathfinder {args.count} {args.resolution}x{args.resolution} {args.difficulty} images "
            f"({args.count // 2} connected, seed {args.seed}) to {folder}: imgs/, metadata/, "
            f"{pathfinder_draw.SETTINGS_FILE}")


def build_parser() -> argparse.ArgumentParser:
    """The `lra-data` parser with a subcommand per dataset and one that checks ListOps files; each
    subcommand sets `run` (its arguments -> the summary line)."""
    parser = CommandParser(prog=PROG, description="Generate data in the layout of the LRA release, or check it.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_listops, _add_check_listops, _add_pathfinder):
        add(commands)
    return parser


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `lra-data` (and `python -m runners.data`)."""
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    then = f"nothing half-written is kept in {out}" if out else "nothing was written"
    print(run_command(args, PROG, out, f"interrupted; {then}; rerun the same command to go on"))


if __name__ == "__main__":
    cli()
