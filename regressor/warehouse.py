"""The DuckDB warehouse: one connection, migrations, named SQL, frame loading, quarantine.

SQL lives in `sql/`: `migrations/NNNN_*.sql` (applied once each, in order, recorded in
`schema_version`), `queries/<name>.sql` (read with `query`) and `statements/<name>.sql` (writes, run
with `execute`). DuckDB allows one writer process per file, so opening a locked file waits.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import polars as pl

from regressor.config import PROJECT_ROOT
from regressor.errors import UserError

SQL_DIR = PROJECT_ROOT / "sql"
MIGRATION_NAME = re.compile(r"^(\d{4})_[\w\-]+\.sql$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*[KMGT]i?B$")
# How long opening waits for another process's lock: a writer's ingest batch takes seconds.
LOCK_TIMEOUT_S = 120.0


class WarehouseLockedError(TimeoutError):
    """Another process kept the warehouse file locked for longer than the timeout. Not a
    `UserError`: trying again (a Prefect task's retry) can help."""


class WarehouseUnreadableError(UserError):
    """The warehouse file is there but DuckDB cannot read it (truncated, not a DuckDB file, no
    permission), at the connect or at a later query; the message names the file, DuckDB's
    reason and the way out."""


@dataclass(frozen=True)
class QuarantineRow:
    source: str
    path: str  # relative to the source root
    file: str  # as ingest saw it
    location: str
    reason: str
    content_hash: str


def connect_with_retry(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Connect, waiting with exponential backoff while another process holds the lock."""
    deadline = time.monotonic() + timeout_s
    delay, warned = 0.05, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            io_error = isinstance(exc, duckdb.IOException)
            if not (io_error and _is_lock_conflict(exc)):  # a lock is waited for; else:
                if io_error or _is_corrupt(exc):
                    raise unreadable(path, exc) from exc
                raise
            if time.monotonic() + delay > deadline:
                raise WarehouseLockedError(
                    f"warehouse {path} still locked after {timeout_s:g} s: another process has "
                    "it open (a DuckDB shell, a notebook); close it, or run again later"
                ) from exc
            if not warned:
                print(f"warehouse {path} is locked by another writer; waiting...", file=sys.stderr)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _is_lock_conflict(exc: duckdb.IOException) -> bool:
    """Whether DuckDB refused the file because another process holds its lock (`Could not set
    lock on file ...: Conflicting lock is held in ...`). Not "lock" anywhere: the message
    quotes the path, and a damaged file under `block-storage/` was waited on as locked."""
    message = str(exc).lower()
    return "could not set lock on file" in message or "conflicting lock" in message


def _names_damage(exc: duckdb.Error, path: Path) -> bool:
    """Whether DuckDB failed on reading `path` itself, not on its lock: an I/O error naming the
    file, or a block whose checksum fails (a plain `duckdb.Error`, which names no file)."""
    if isinstance(exc, duckdb.IOException):
        return str(path) in str(exc) and not _is_lock_conflict(exc)
    return _is_corrupt(exc)


def _is_corrupt(exc: duckdb.Error) -> bool:
    return str(exc).startswith("Corrupt database file")


def unreadable(path: Path, exc: duckdb.Error) -> WarehouseUnreadableError:
    return WarehouseUnreadableError(
        f"warehouse {path} cannot be read: {exc}. If the file is damaged, move it aside and "
        "ingest again: the warehouse is rebuilt from the source files"
    )


class WarehouseTooNewError(UserError):
    """The warehouse holds schema migrations this code does not have (a newer textperf wrote
    it): an older writer used to go on, into tables it does not know the shape of."""


class NoRecordsTableError(LookupError):
    """A warehouse to read that is not there yet, or that no ingest has set up; the message
    names the file, and callers add what to ingest."""


@contextmanager
def reading_records(path: Path) -> Iterator[Warehouse]:
    """The warehouse at `path`, read-only, for a block that reads its records: a
    `NoRecordsTableError` when the file is missing (read-only, DuckDB would fail on it with its
    own words) or holds no records table (a DuckDB file no ingest has set up)."""
    if not path.is_file():
        raise NoRecordsTableError(f"no warehouse at {path} yet")
    try:
        with Warehouse(path, read_only=True) as wh:
            yield wh
    except duckdb.CatalogException as exc:
        raise NoRecordsTableError(f"{path} holds no records table") from exc


def sql_text(kind: str, name: str, sql_dir: Path = SQL_DIR) -> str:
    path = sql_dir / kind / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path}")
    return path.read_text(encoding="utf-8")


class Warehouse:
    """`with Warehouse(path) as wh: wh.migrate(); wh.query("records")`."""

    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        lock_timeout_s: float | None = None,  # None: LOCK_TIMEOUT_S
        sql_dir: Path = SQL_DIR,
        memory_limit: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.sql_dir = sql_dir
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        timeout_s = LOCK_TIMEOUT_S if lock_timeout_s is None else lock_timeout_s
        self.con = connect_with_retry(self.path, read_only, timeout_s)
        self.execute("session_utc")
        if memory_limit is not None:
            # DuckDB's buffer pool otherwise keeps written blocks cached up to 80% of RAM, so a
            # long ingest's RSS would grow with the data; past the limit it evicts (or spills).
            if not MEMORY_SIZE.match(memory_limit):  # SET takes no bound parameters
                raise ValueError(f"memory_limit {memory_limit!r} is not like '512MB' or '2GiB'")
            self.con.execute(f"SET memory_limit = '{memory_limit}'")

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        # DuckDB reads blocks as it needs them, so a damaged file can pass the connect and fail
        # any later query: named here, as one line, for every block that uses the warehouse.
        if isinstance(exc, duckdb.Error) and _names_damage(exc, self.path):
            raise unreadable(self.path, exc) from exc

    def close(self) -> None:
        self.con.close()

    # -- SQL by name -------------------------------------------------------------------------

    def run_script(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run every statement of `sql`, binding to each only the `$params` it names."""
        params = params or {}
        for statement in self.con.extract_statements(sql):
            names = statement.named_parameters
            missing = names - params.keys()
            if missing:
                raise KeyError(f"SQL parameters not given: {sorted(missing)}")
            self.con.execute(statement.query, {k: params[k] for k in names} or None)

    def query(self, name: str, /, **params: Any) -> pl.DataFrame:
        """Run `sql/queries/<name>.sql` with bound `$params` and return its rows."""
        sql = sql_text("queries", name, self.sql_dir)
        return self.con.sql(sql, params=params or None).pl()

    def execute(self, name: str, /, **params: Any) -> None:
        """Run the write statements in `sql/statements/<name>.sql`."""
        self.run_script(sql_text("statements", name, self.sql_dir), params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- migrations --------------------------------------------------------------------------

    def migrations(self) -> list[tuple[int, Path]]:
        found = []
        for path in sorted((self.sql_dir / "migrations").glob("*.sql")):
            match = MIGRATION_NAME.match(path.name)
            if not match:
                raise ValueError(f"{path}: migration names look like 0001_name.sql")
            found.append((int(match.group(1)), path))
        versions = [v for v, _ in found]
        if len(set(versions)) != len(versions):
            raise ValueError(f"duplicate migration numbers in {self.sql_dir / 'migrations'}")
        return found

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in its own transaction; returns their names."""
        self.execute("create_schema_version")
        done = set(self.query("applied_migrations")["version"].to_list())
        known = self.migrations()
        newer = sorted(done - {v for v, _ in known})
        if newer:  # its schema is one this code does not know: writing could break it
            latest = max((v for v, _ in known), default=0)
            raise WarehouseTooNewError(
                f"{self.path}: written by a newer textperf (schema migration "
                f"{', '.join(map(str, newer))}; this one knows up to {latest}):"
                " upgrade textperf, or give this one a var dir of its own"
            )
        applied = []
        for version, path in known:
            if version in done:
                continue
            with self.transaction():
                self.run_script(path.read_text(encoding="utf-8"))
                self.execute("record_migration", version=version, name=path.stem)
            applied.append(path.stem)
        return applied

    # -- loading -----------------------------------------------------------------------------

    def insert_frame(self, table: str, frame: pl.DataFrame) -> int:
        """Append a polars frame to `table`, matching columns by name; returns rows inserted."""
        if frame.is_empty():
            return 0
        view = f"_frame_{table}"
        with self.registered(view, frame):
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
        return frame.height

    @contextmanager
    def registered(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        """Expose `frame` to SQL as the view `name` for the duration of the block."""
        if not IDENTIFIER.match(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
        self.con.register(name, frame)
        try:
            yield
        except BaseException:
            # A failed statement aborts the transaction, which then refuses even this: the
            # statement's own error, not "transaction is aborted", must reach the caller.
            with suppress(duckdb.Error):
                self.con.unregister(name)
            raise
        self.con.unregister(name)

    def write_quarantine(self, rows: Sequence[QuarantineRow], run_id: str) -> int:
        frame = pl.DataFrame(
            [vars(r) for r in rows],
            schema=dict.fromkeys(QuarantineRow.__dataclass_fields__, pl.String),
        )
        return self.insert_frame("quarantine", frame.with_columns(ingest_run_id=pl.lit(run_id)))

    # -- snapshots ---------------------------------------------------------------------------

    def content_hash(self, source: str) -> str:
        """sha256 over `source`'s records (id, task, period, config, logs, target): the name
        of the data snapshot a model of that source trains on."""
        return str(self.query("content_hash", source=source)["content_hash"].item())
