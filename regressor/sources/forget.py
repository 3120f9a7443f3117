"""Forgetting input files that are gone for good (`textperf ingest --forget-gone`).

By default a stored file that is no longer there keeps its rows: a source folder on a network
mount that is away for one night must not empty the training set. A team that deletes inputs on
purpose asks for their rows to go; then a file counts as gone only when the file system says so
(no such file), never when it cannot tell (a folder that cannot be searched), and a source folder
that is not there at all, empty (the mount point of a share that is away) or unlistable stops the
run instead of forgetting everything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl

from regressor.errors import UserError
from regressor.sources.common import NOT_READ, forget_files, source_paths
from regressor.sources.table import STORED_ELSEWHERE
from regressor.warehouse import Warehouse

logger = logging.getLogger(__name__)


class SourceFolderMissingError(UserError, FileNotFoundError):
    """The source folder itself is not there, empty or unlistable: forgetting would drop every
    stored file (a mistake, or a share not mounted: retrying at once cannot help)."""


def is_gone(root: Path, rel: str) -> bool:
    """True only when `root / rel` does not exist: no such file, or a path component that is no
    longer a folder. Any other error (permissions, I/O) means "cannot tell": keep the rows."""
    try:
        (root / rel).lstat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def gone_files(wh: Warehouse, source: str, root: Path) -> list[str]:
    """Paths (relative to `root`) the warehouse holds rows of for `source` that are gone."""
    stored = wh.query("stored_paths", source=source, not_read=NOT_READ)["path"]
    return [rel for rel in stored if is_gone(root, rel)]


def _unlisted(root: Path) -> str | None:
    """Why the files under `root` cannot be told from a share that is away, None if they can."""
    try:
        with os.scandir(root) as entries:
            return None if next(entries, None) else "is empty (a share not mounted?)"
    except OSError as exc:
        return f"cannot be listed ({exc.strerror})"


def require_source_folder(source: str, root: Path, hint: str = "") -> None:
    """A `SourceFolderMissingError` when `root` is not there, empty or cannot be listed: what
    an unmounted share (or its empty mount point) or a misspelt `root` looks like. Ingesting
    then read nothing, kept every stored row and exited 0, as if all were well."""
    problem = "is not there (not mounted?)" if not root.is_dir() else _unlisted(root)
    if problem:
        raise SourceFolderMissingError(
            f"{root}: the source folder of {source!r} {problem}; nothing was read and the "
            f"stored rows stay{hint}"
        )


def forget_gone(wh: Warehouse, source: str, root: Path) -> list[str]:
    """Delete every row derived from the source's gone files, and from the other file of a run
    one of whose files is gone, in one transaction; and the stored state (not the rows) of the
    files holding a repeat of a key, which the ingest that follows reads again. Their rows were
    deleted too, so a run stopped before that ingest had lost their good records. Returns the
    gone paths."""
    require_source_folder(source, root)  # else every file would look gone
    gone = gone_files(wh, source, root)
    if not gone:
        return []
    frame = pl.DataFrame({"path": gone}, schema={"path": pl.String})
    with wh.registered("gone_files", frame):
        again = wh.query("gone_dependents", source=source, repeated=STORED_ELSEWHERE)
    forget = set(gone) | set(again.filter(~pl.col("reread_only"))["path"])
    reread = set(again.filter(pl.col("reread_only"))["path"]) - forget
    with wh.transaction():
        forget_files(wh, source_paths(source, forget))
        with wh.registered("staged_files", source_paths(source, reread)):
            wh.execute("delete_staged_file_states")
    logger.info("%s: forgot %d gone file(s) under %s: %s", source, len(gone), root, gone[:20])
    return gone
