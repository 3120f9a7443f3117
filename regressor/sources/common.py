"""Bookkeeping shared by the `table` and `runs` adapters: which files changed, their `files` rows,
quarantine rows, typed JSON values from text cells, and the run's report.

Same contract as the fleet adapter: a file whose bytes and parser are unchanged is skipped; a
changed file's old rows are replaced in one transaction; every file seen ends up ingested,
quarantined or unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
import yaml

from regressor.config import unsafe_pattern
from regressor.warehouse import QuarantineRow, Warehouse

Known = dict[str, tuple[str, str, str]]  # path -> (content hash, parser, status) as stored
# An integer: a number when Int64 holds it, else kept as its text (as a float, two ids of 20
# digits would become one value).
INT_RE = r"^[-+]?\d+$"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_RE = r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$"
# A YAML document may expand to at most this many nodes once its aliases are followed: a real
# config has a few thousand; a "billion laughs" bomb has 10^9 from a few hundred bytes.
MAX_YAML_NODES = 100_000
VANISHED = "vanished since the folder was listed"
# Ends the reason of every file refused unread: each run replaces the source's rows so marked
# (`build_report`), so a file readable again loses its row, and only its row.
NOT_READ = "; not read"
logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class BadInputError(ValueError):
    """A file (or part of it) that cannot be used; `location` says where."""

    def __init__(self, reason: str, location: str = "file") -> None:
        super().__init__(reason)
        self.location = location


@dataclass
class Tally:
    """One ingest run's counts. `refused`: files turned away before reading, as (path relative
    to the source root, file, reason); `build_report` puts them in the quarantine table."""

    seen: int = 0
    ingested: int = 0
    quarantined: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    refused_paths: set[str] = field(default_factory=set)  # the `rel` of each of `refused`

    def refuse(self, rel: str, file: str, problem: str) -> None:
        """Count a file refused before reading as seen and quarantined, for `problem`; logged.
        Once per file: two globs of a source may both reach it (an unlistable source folder)."""
        if rel in self.refused_paths:
            return
        self.refused_paths.add(rel)
        reason = f"{file}: {problem}{NOT_READ}"
        logger.warning(reason)
        self.seen += 1
        self.quarantined += 1
        self.refused.append((rel, file, reason))
        self.rejected.append((file, reason))


@contextmanager
def as_bad_input(path: Path) -> Iterator[None]:
    """Whatever reading or parsing one file raises becomes a BadInputError naming the reason, so
    the file is quarantined and the run goes on: a vanished or unreadable file (OSError), and
    any failure a parser meets on hostile bytes that no rule foresaw (logged with its trace). A
    warehouse error (disk full, lock lost) is not the file's: it stops the run."""
    try:
        yield
    except (BadInputError, duckdb.Error):  # the warehouse failing is the run's problem
        raise
    except FileNotFoundError as exc:  # listed a moment ago: deleted or moved since
        raise BadInputError(VANISHED) from exc
    except OSError as exc:
        raise BadInputError(f"unreadable: {exc.strerror or exc}") from exc
    except Exception as exc:  # one file's failure must not stop the run
        logger.warning("%s: %s while parsing", shown_path(path), type(exc).__name__, exc_info=True)
        detail = " ".join(str(exc).split())[:200]
        raise BadInputError(f"could not be parsed ({type(exc).__name__}: {detail})") from exc


def each_or_problem(
    items: Sequence[T], paths: Sequence[Path], summarize: Callable[[Sequence[T]], Sequence[R]]
) -> list[R | BadInputError]:
    """`summarize(items)` in one pass, as batches are; should that fail on an input no check
    foresaw, each item alone, so that only the files whose item fails (`paths`, one per item)
    get their problem instead of a result, not the whole batch."""
    try:
        return list(summarize(items))
    except Exception:  # one file's failure must not cost its batch: find it
        out: list[R | BadInputError] = []
        for item, path in zip(items, paths, strict=True):
            try:
                with as_bad_input(path):
                    out.append(summarize([item])[0])
            except BadInputError as exc:
                out.append(exc)
        return out


def shown_path(path: Path) -> str:
    """`path` as text that can always be stored: bytes of a name that is not UTF-8 escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a file read in blocks, so a huge file is never held in memory just to hash it."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def known_files(wh: Warehouse, source: str) -> Known:
    rows = wh.query("known_files", source=source).iter_rows()
    return {path: (h, parser, status) for path, h, parser, status in rows}


def rules_hash(*rules: Any) -> str:
    """A short digest of the validation rules: changing them re-parses unchanged bytes."""
    return hashlib.sha256(repr(rules).encode()).hexdigest()[:12]


def inside(root: Path, path: Path) -> bool:
    """True when `path`, with every symlink resolved, lies under `root` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def safe_files(root: Path, patterns: str | Iterable[str], tally: Tally) -> list[Path]:
    """Regular files matched by `patterns` under `root` that really live under `root`, sorted.

    Patterns with `..` or absolute parts raise ValueError. A match that cannot be read safely is
    never read: one that resolves outside `root` (a symlink out of the source folder), a name
    that is not UTF-8, a directory, a dangling symlink or loop, a FIFO or device. It is logged
    and refused in the run's `tally` (the report and the quarantine table show it).
    A directory (not a symlink to one) is passed over when every pattern matching it ends in a
    bare wildcard (`logs/**/*`) and also matched a file: such a pattern names every entry,
    folders on the way to the files too. A pattern that matched folders alone (`logs/*/`) has
    them refused, so a glob that reads nothing shows in the quarantine. So is a folder a pattern
    searches that cannot be listed (`unlistable_folders`): its files are not read, but shown.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    for pattern in patterns:
        if problem := unsafe_pattern(pattern):
            raise ValueError(f"glob {pattern!r} {problem}; globs must stay under {root}")
    meant: dict[Path, bool] = {}  # match -> a pattern meant it, not passed it on the way
    for pattern in patterns:
        matches = list(root.glob(pattern))
        passing = set(Path(pattern).name) == {"*"} and not all(_folder(p) for p in matches)
        for path in matches:
            meant[path] = meant.get(path, False) or not passing
    kept = []
    unlisted = unlistable_folders(root, patterns)
    for path in sorted(meant.keys() | unlisted.keys()):
        if not meant.get(path, True) and _folder(path) and path not in unlisted:
            continue  # a folder `**/*` passed on its way to the files
        problem = unlisted.get(path) or unreadable_reason(root, path)
        if problem is None:
            kept.append(path)
            continue
        tally.refuse(shown_path(path.relative_to(root)), shown_path(path), problem)
    return kept


def unlistable_folders(root: Path, patterns: Sequence[str]) -> dict[Path, str]:
    """{folder: why} for each folder under `root` (itself included, a symlink too) that a
    pattern's glob needs and cannot use: `Path.glob` passes over those in silence, so their
    files would be neither read nor quarantined. Forgetting keeps their rows (`forget.is_gone`).
    Glob lists a folder when the pattern's next part is a wildcard (or to recurse into it under
    `**`), and only looks a literal next part up in it, which needs no listing but may be denied
    too (a folder without search permission)."""
    found = {}
    for pattern in patterns:
        parts = Path(pattern).parts
        for depth, part in enumerate(parts):
            if depth == 0:
                parents = [root] if root.is_dir() else []
            else:
                parents = [p for p in root.glob(str(Path(*parts[:depth]))) if _folder(p)]
            lists = _wild(part) or (depth > 0 and parts[depth - 1] == "**")
            for folder in parents:
                if folder not in found and (problem := _search_problem(folder, part, lists)):
                    found[folder] = problem
    return found


def _search_problem(folder: Path, part: str, lists: bool) -> str | None:
    """Why glob cannot list `folder` (`lists`) or look `part` up in it; None when it can."""
    try:
        if lists:
            with os.scandir(folder):
                return None
        (folder / part).lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # looked up, and not there: nothing is hidden
    except OSError as exc:
        verb = "listed" if lists else "searched"
        return f"a folder the glob searches cannot be {verb} ({exc.strerror})"
    return None


def _wild(part: str) -> bool:
    return any(char in part for char in "*?[")


def _folder(path: Path) -> bool:
    """A real directory, not a symlink to one (that one is checked like any symlink)."""
    return path.is_dir() and not path.is_symlink()


def unreadable_reason(root: Path, path: Path) -> str | None:
    """Why `path`, a glob match under `root`, must not be read; None for a file to read."""
    if shown_path(path) != str(path):
        return "the file name is not valid UTF-8 (rename it)"
    if path.is_symlink() and not path.exists():
        return "a symlink to nothing (dangling, or a loop)"
    if path.is_dir():
        return "a directory, not a file"
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device)"
    if not inside(root, path):
        return f"resolves outside the source folder {root} (symlink?)"
    return None


class YAMLBombError(yaml.YAMLError):
    """A YAML document whose aliases expand past `MAX_YAML_NODES` nodes, or refer to themselves.

    A `yaml.YAMLError`, so callers that quarantine invalid YAML quarantine these too.
    """


def expanded_nodes(node: yaml.Node, limit: int) -> int:
    """How many nodes `node` stands for once aliases are expanded; raises past `limit` or on a
    cycle. Shared sub-trees are counted once per reference but visited once (memoised)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise YAMLBombError("refused: a YAML alias refers to itself (cyclic document)")
        on_path.add(key)
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [x for pair in n.value for x in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise YAMLBombError(
                    f"refused: YAML aliases expand to more than {limit} nodes (a YAML bomb?)"
                )
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml_limited(text: str, loader: type, limit: int = MAX_YAML_NODES) -> Any:
    """`yaml.load(text, Loader=loader)` for a safe `loader`, refusing alias bombs and cycles
    before anything is constructed (construction shares aliased objects, but any later JSON
    dump would expand them: 9 levels of 9 aliases is a 2 GB string)."""
    safe = issubclass(loader, yaml.constructor.SafeConstructor)
    if not safe or issubclass(loader, yaml.constructor.FullConstructor):
        raise TypeError(f"{loader.__name__} is not a safe YAML loader")
    reader = loader(text)
    try:
        node = reader.get_single_node()
        if node is None:
            return None
        expanded_nodes(node, limit)
        return reader.construct_document(node)
    except RecursionError as exc:
        raise YAMLBombError("refused: YAML nested too deeply") from exc
    finally:
        reader.dispose()


def quarantine_row(
    source: str, root: Path, path: Path, problem: BadInputError, content_hash: str
) -> QuarantineRow:
    rel = path.relative_to(root).as_posix()
    return QuarantineRow(
        source, rel, str(path), problem.location, f"{path}: {problem}", content_hash
    )


def forget_files(wh: Warehouse, files: pl.DataFrame) -> None:
    """Drop every row derived from `files` (their `source` and `path`), in the caller's
    transaction: records, raw rows, quarantine rows and `files` rows alike."""
    with wh.registered("staged_files", files.select("source", "path")):
        wh.execute("delete_staged_files")


def source_paths(source: str, paths: Iterable[str]) -> pl.DataFrame:
    """`source` and each of `paths` (sorted), the frame `forget_files` and staged statements
    take."""
    ordered = sorted(paths)
    return pl.DataFrame(
        {"source": [source] * len(ordered), "path": ordered},
        schema={"source": pl.String, "path": pl.String},
    )


def forget_paths(wh: Warehouse, source: str, paths: Sequence[str]) -> None:
    """`forget_files` of `source`'s `paths` in a transaction of its own; nothing when none."""
    if paths:
        with wh.transaction():
            forget_files(wh, source_paths(source, paths))


def replace_files(
    wh: Warehouse,
    source: str,
    files: Sequence[dict[str, Any]],
    quarantined: Sequence[QuarantineRow],
    run_id: str,
) -> None:
    """Inside the caller's transaction: drop rows derived from `files`, record them afresh."""
    frame = pl.DataFrame(list(files))
    forget_files(wh, frame)
    wh.insert_frame("files", frame)
    wh.write_quarantine(quarantined, run_id)


def file_row(
    source: str,
    rel: str,
    kind: str,
    content_hash: str,
    parser: str,
    ok: bool,
    size: int,
    run_id: str,
) -> dict[str, Any]:
    return {
        "source": source,
        "path": rel,
        "kind": kind,
        "content_hash": content_hash,
        "parser": parser,
        "status": "ok" if ok else "quarantined",
        "size_bytes": size,
        "ingest_run_id": run_id,
    }


def typed_columns(frame: pl.DataFrame, columns: Sequence[str]) -> list[list[Any]]:
    """Text cells -> JSON values, one list per column: integers and finite decimals become numbers,
    empty cells None, anything else stays a string (typed per value, so no guess can fail), as
    does an integer beyond Int64 (`INT_RE`)."""
    exprs = []
    for c in columns:
        s = pl.col(c).cast(pl.String).str.strip_chars()
        exprs += [
            pl.when(s.str.contains(INT_RE)).then(s.cast(pl.Int64, strict=False)).alias(f"{c}\0i"),
            pl.when(s.str.contains(FLOAT_RE) & ~s.str.contains(INT_RE))
            .then(s.cast(pl.Float64, strict=False))
            .alias(f"{c}\0f"),
            pl.when(s != "").then(s).alias(f"{c}\0s"),
        ]
    typed = frame.select(exprs)
    out = []
    for c in columns:
        ints, floats, texts = (typed[f"{c}\0{k}"].to_list() for k in "ifs")
        out.append(
            [
                i if i is not None else f if f is not None else t
                for i, f, t in zip(ints, floats, texts, strict=True)
            ]
        )
    return out


def message(*parts: str | pl.Expr) -> pl.Expr:
    """Text joined from literal pieces and column values (null if a value is). Not `pl.format`:
    its template reads a `{}` in a file or column name as a slot, and a file named `run{1}.csv`
    was quarantined whole."""
    return pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])


def target_problem(raw: pl.Expr, name: str, lo: float, hi: float) -> tuple[pl.Expr, pl.Expr]:
    """(target as Float64, a reason when it is missing, non-numeric or absurd, else null)."""
    text = raw.cast(pl.String).str.strip_chars()
    value = text.cast(pl.Float64, strict=False)
    problem = (
        pl.when(text.is_null() | (text == ""))
        .then(pl.lit(f"missing target {name}"))
        .when(value.is_null())
        .then(message(f"non-numeric target {name} '", text.str.slice(0, 40), "'"))
        .when(~value.is_finite() | (value < lo) | (value > hi))
        .then(message(f"absurd target {name} ", text, f" (allowed {lo:g}..{hi:g})"))
    )
    return value, problem
