"""Ingest throughput and memory, side by side with DuckDB's own bare read of the same files.

    .venv/bin/python bench/ingest.py --gb 1.0

Generates a demo fleet of about `--gb` GB (`regressor.fleetsim` with more cells, days and samples;
kept under --work-dir and reused when its size matches), then in one run:

1. DuckDB's bare `read_csv` of every log (one VARCHAR column per line) and of the targets CSV:
   the floor any ingest pays to touch the bytes;
2. `ingest_fleet` into a fresh warehouse, in a child process; its peak RSS is the largest sum
   over that process and its parsing workers (sampled every 50 ms), or the largest single
   process's peak (`RUSAGE_CHILDREN`) if that is higher. The generator and the DuckDB read above
   stay in this process.

Prints `throughput_ratio` (ingest MB/s / DuckDB MB/s), `mb_per_s`, `records_per_s`, `peak_rss_gb`,
and `cpu_ratio` (DuckDB's CPU seconds / the ingest's, workers and their start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regressor.config import FleetSimConfig, load_source_config  # noqa: E402
from regressor.fleetsim import generate_fleet  # noqa: E402

# About 105 KB of log per cell-day at these rates (measured); cells x days scale the total.
SAMPLES_PER_DAY, JOBS_PER_DAY, BYTES_PER_LOG = 480, 400, 105_000
N_CELLS = 50


def fleet_config(gb: float) -> FleetSimConfig:
    n_logs = max(4, round(gb * 1e9 / BYTES_PER_LOG))
    n_cells = min(N_CELLS, max(2, n_logs // 20))
    n_days = max(2, round(n_logs / n_cells))
    return FleetSimConfig(
        seed=11,
        n_cells=n_cells,
        n_days=n_days,
        samples_per_day=SAMPLES_PER_DAY,
        jobs_per_day=JOBS_PER_DAY,
    )


def duckdb_bare_read(root: Path) -> tuple[float, float, int]:
    """Seconds and CPU seconds (all threads) for DuckDB to read every log line and target row;
    rows read."""
    con = duckdb.connect()
    logs = str(root / "logs" / "*" / "*.log")
    start, cpu = time.perf_counter(), time.process_time()
    # sum(strlen(...)) makes DuckDB materialise every line, not just count line ends.
    lines = con.sql(
        f"SELECT count(*), sum(strlen(line)) FROM read_csv('{logs}', header = false,"
        " columns = {'line': 'VARCHAR'}, delim = '\\0', quote = '', escape = '',"
        " auto_detect = false)"
    ).fetchall()[0][0]
    targets = con.sql(f"SELECT count(*) FROM read_csv('{root / 'targets.csv'}')").fetchall()[0][0]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    con.close()
    return seconds, cpu, lines + targets


def child_ingest(raw_dir: Path, warehouse: Path) -> None:
    """In the child: ingest, print what happened as JSON (timed without interpreter start)."""
    from regressor.sources.dispatch import INGEST_MEMORY_LIMIT
    from regressor.sources.fleet import ingest_fleet
    from regressor.warehouse import Warehouse

    source = load_source_config("demo_fleet")
    start = time.perf_counter()
    with Warehouse(warehouse, memory_limit=INGEST_MEMORY_LIMIT) as wh:
        report = ingest_fleet(wh, source, raw_dir, run_id="bench")
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # includes the workers' start-up
    out = {"seconds": seconds, "cpu_s": cpu, "records": report.records, "files": report.files_seen}
    print(json.dumps(out | {"quarantined": report.files_quarantined}))


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, now (parents read from /proc/*/stat)."""
    rss, parent = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        proc = int(stat.parent.name)
        parent[proc], rss[proc] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        proc = stack.pop()
        total += rss.get(proc, 0)
        stack += [child for child, up in parent.items() if up == proc]
    return total


def run_child(raw_dir: Path, warehouse: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(raw_dir), "--warehouse", str(warehouse)]
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(child.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    sampler.join()
    if child.returncode:
        raise RuntimeError(f"ingest child failed ({child.returncode}):\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux: the largest resident set of any waited-for descendant.
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result["peak_rss_gb"] = max(peak[0], single) / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="approximate size of the fleet")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "textperf-bench"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_ingest(args.child, args.warehouse)
        return
    cfg = fleet_config(args.gb)
    raw_dir = args.work_dir / f"fleet-{cfg.n_cells}x{cfg.n_days}"
    source = load_source_config("demo_fleet")
    start = time.perf_counter()
    summary = generate_fleet(raw_dir / source.root, cfg)
    print(
        f"fleet: {cfg.n_cells} cells x {cfg.n_days} days, {summary.n_bytes / 1e9:.3f} GB, "
        f"{summary.n_files} files (generated in {time.perf_counter() - start:.0f} s)"
    )
    duck_s, duck_cpu, duck_rows = duckdb_bare_read(raw_dir / source.root)
    warehouse = args.work_dir / "bench.duckdb"
    warehouse.unlink(missing_ok=True)
    result = run_child(raw_dir, warehouse)
    mb = summary.n_bytes / 1e6
    print(
        f"duckdb_bare_read_s: {duck_s:.2f} ({duck_rows} rows, {mb / duck_s:.1f} MB/s, "
        f"{duck_cpu:.1f} CPU s)"
    )
    print(
        f"ingest_s: {result['seconds']:.2f} ({result['files']} files, "
        f"{result['quarantined']} quarantined, {result['cpu_s']:.1f} CPU s)"
    )
    print(f"throughput_ratio: {duck_s / result['seconds']:.3f}")
    print(f"mb_per_s: {mb / result['seconds']:.1f}")
    print(f"records_per_s: {result['records'] / result['seconds']:.1f}")
    print(f"peak_rss_gb: {result['peak_rss_gb']:.3f}")
    # On a shared machine the wall-time ratio follows the load; CPU seconds do much less.
    print(f"cpu_ratio: {duck_cpu / result['cpu_s']:.3f}")


if __name__ == "__main__":
    main()
