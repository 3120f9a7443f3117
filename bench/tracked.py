r"""Record any benchmark run in MLflow: its command, its `name: value` figures, the files it wrote.

    .venv/bin/python bench/tracked.py [--store DIR|URL] [--experiment bench] [--run-name NAME] \
        [--artifacts DIR ...] -- bench/accuracy.py --dataset c3o --steps 2300 ...

Every bench script prints its figures as `name: value` lines; this runs one (same interpreter,
output streamed through unchanged) and logs an MLflow run of it: the command line and git commit
as tags, every numeric figure as a metric (a name printed twice keeps each value, as steps 0, 1,
..; `ingest_s: 12.3 (30 files)` is the metric 12.3 and the tag `ingest_s_note`), every other
`name: value` line as a tag (`prior_torch_version: 2.13.0+cpu`), and the small files the run
wrote under each `--artifacts` directory (split files, members' samples `.npz`, plots;
checkpoints and a store's own artifacts stay where they are), so `bench/pool.py` can rescore a
run's samples on another machine. The run is FAILED if the script fails, whose exit code this
returns. `--store`: a tracking server's URL or a directory holding a local store (default
`var/`, the demo's).
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import mlflow

from regressor.config import PROJECT_ROOT
from regressor.registry import git_commit
from regressor.tracking import configure_mlflow, store_paths

FIGURE = re.compile(r"^([A-Za-z0-9_.\-/]+): (.+)$")
# `ingest_s: 12.34 (9551 files, 3 quarantined)`: a number, then a note on what it covers
NOTED_NUMBER = re.compile(r"^(\S+) \((.*)\)$")
# what a bench writes beside its checkpoints that is worth keeping with the run
ARTIFACT_SUFFIXES = (".json", ".npz", ".png", ".csv", ".txt")
# never logged again: checkpoints (megabytes per member), stores' own artifacts and state
SKIPPED_DIRS = frozenset({"checkpoints", "mlartifacts", "prefect"})
TAG_LIMIT = 5000  # MLflow's tag value limit (characters)


def parse_figure(line: str) -> tuple[str, float | str] | None:
    """`name: value` as (name, float) when the value is a number, (name, text) otherwise, or
    None for any other line (progress, logs)."""
    match = FIGURE.match(line.strip())
    if match is None:
        return None
    name, value = match[1], match[2].strip()
    try:
        number = float(value)
    except ValueError:
        return name, value
    return name, number


class Figures:
    """The figures of one run's output, in the order printed."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.tags: dict[str, str] = {}

    def add(self, line: str) -> None:
        figure = parse_figure(line)
        if figure is None:
            return
        name, value = figure
        if isinstance(value, str):
            value = noted_number(name, value, self.tags)
        if isinstance(value, float):
            self.metrics[name].append(value)
        else:
            self.tags[name] = value[:TAG_LIMIT]


def noted_number(name: str, value: str, tags: dict[str, str]) -> float | str:
    """A number followed by a note in brackets as the number, the note kept as the tag
    `<name>_note`; any other text as it is. Such figures were tags, out of MLflow's metric
    charts and comparisons."""
    match = NOTED_NUMBER.match(value)
    if match is None:
        return value
    try:
        number = float(match[1])
    except ValueError:
        return value
    tags[f"{name}_note"] = match[2][:TAG_LIMIT]
    return number


def run_streaming(command: list[str], figures: Figures) -> int:
    """Run `command`, echo its standard output line by line as it comes and feed `figures` with
    it; returns its exit code."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, bufsize=1
    ) as process:  # stderr (logs, progress bars) passes straight through, unparsed
        assert process.stdout is not None  # piped above
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            figures.add(line)
        return process.wait()


def new_small_files(directories: list[Path], since: float) -> list[tuple[str, Path]]:
    """(artifact folder, file) for the files under `directories` written at or after `since`, of
    the kinds worth keeping, outside `SKIPPED_DIRS`; the folder is `files/<directory
    name>/<path within it>`."""
    found = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            within = path.relative_to(directory)
            if (
                path.is_file()
                and path.suffix in ARTIFACT_SUFFIXES
                and not SKIPPED_DIRS.intersection(within.parts)
                and path.stat().st_mtime >= since
            ):
                folder = Path("files", directory.resolve().name, within.parent).as_posix()
                found.append((folder, path))
    return found


def log_figures(figures: Figures) -> None:
    for name, values in figures.metrics.items():
        for step, value in enumerate(values):
            if math.isfinite(value):  # MLflow stores no NaN/inf usefully; the echo keeps them
                mlflow.log_metric(name, value, step=step)
    if figures.tags:
        mlflow.set_tags({f"figure.{name}": value for name, value in figures.tags.items()})


def tracked(args: argparse.Namespace) -> int:
    """Run the bench command inside an MLflow run; the command's exit code."""
    configure_mlflow(store_paths(args.store, PROJECT_ROOT / "var"), args.experiment)
    started = time.time() - 1  # file mtimes are coarse on some filesystems
    tags = {"command": shlex.join(args.command)[:TAG_LIMIT], "git_commit": git_commit()}
    run = mlflow.start_run(run_name=args.run_name or Path(args.command[0]).stem, tags=tags)
    code = 1
    try:
        figures = Figures()
        code = run_streaming([sys.executable, *args.command], figures)
        log_figures(figures)
        for folder, path in new_small_files([Path(d) for d in args.artifacts], started):
            mlflow.log_artifact(str(path), artifact_path=folder)
    finally:  # a killed or failed bench leaves a FAILED run, not one that looks finished
        mlflow.end_run(status="FINISHED" if code == 0 else "FAILED")
    print(f"tracked_run_id: {run.info.run_id}", flush=True)
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="tracking server URL, or a directory (default: var/)")
    parser.add_argument("--experiment", default="bench", help="MLflow experiment")
    parser.add_argument("--run-name", help="default: the script's name")
    parser.add_argument(
        "--artifacts",
        nargs="*",
        default=[],
        help="directories whose new small files (json, npz, png, csv, txt) are logged",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [its args]")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the bench command after --, e.g. -- bench/accuracy.py --dataset c3o")
    return args


if __name__ == "__main__":
    sys.exit(tracked(parse_args()))
