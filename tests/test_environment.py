"""Which precision `auto` trains in, and the hardware probe it rests on."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from regressor.environment import (
    LIBRARY_ROOT,
    SQL_ROOT,
    code_digest,
    has_fast_bf16,
    numeric_environment,
    resolve_precision,
    source_digest,
)


@pytest.mark.parametrize("given", ["bf16-mixed", "32-true", "16-mixed"])
def test_an_explicit_precision_is_kept_whatever_the_cpu(given: str):
    assert resolve_precision(given, fast_bf16=False) == given
    assert resolve_precision(given, fast_bf16=True) == given


def test_auto_trains_in_bf16_only_where_the_cpu_has_it_in_hardware():
    assert resolve_precision("auto", fast_bf16=True) == "bf16-mixed"
    assert resolve_precision("auto", fast_bf16=False) == "32-true"
    assert resolve_precision("auto") == ("bf16-mixed" if has_fast_bf16() else "32-true")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's CPU flags")
def test_the_probe_agrees_with_the_kernels_cpu_flags():
    flags = next(
        line.split(":", 1)[1].split()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    assert has_fast_bf16() == bool({"avx512_bf16", "amx_tile"} & set(flags))
    assert numeric_environment()["bf16_in_hardware"] == str(has_fast_bf16())


def test_the_code_digest_follows_the_library_source_and_sql_and_nothing_else(tmp_path: Path):
    copy, sql = tmp_path / "regressor", tmp_path / "sql"
    shutil.copytree(LIBRARY_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SQL_ROOT, sql)
    assert source_digest(copy, sql) == source_digest(LIBRARY_ROOT, SQL_ROOT) == code_digest()
    (copy / "notes.md").write_text("not code")
    (sql / "README").write_text("not code")
    assert source_digest(copy, sql) == code_digest()
    model = copy / "model.py"
    model.write_text(model.read_text() + "\n# an edit\n")
    assert source_digest(copy, sql) != code_digest()
    model.write_text(model.read_text().removesuffix("\n# an edit\n"))
    assert source_digest(copy, sql) == code_digest()
    # The records query's ORDER BY is the order training visits them in: it changes the model.
    records = sql / "queries" / "records.sql"
    records.write_text(records.read_text().replace("ORDER BY", "ORDER BY record_id DESC,", 1))
    assert source_digest(copy, sql) != code_digest()


def test_the_code_digest_is_of_the_code_the_process_imported(tmp_path: Path):
    """A checkout edited under a running process (a `git pull` mid-run) leaves its digest, and
    so its training and adaptation keys, as they were when it imported the library."""
    shutil.copytree(
        LIBRARY_ROOT, tmp_path / "regressor", ignore=shutil.ignore_patterns("__pycache__")
    )
    script = (
        "import pathlib, regressor.environment as env\n"
        "before = env.code_digest()\n"
        "model = pathlib.Path(env.LIBRARY_ROOT) / 'model.py'\n"
        "model.write_text(model.read_text() + '# pulled mid-run\\n')\n"
        "print(before == env.code_digest() != env.source_digest(env.LIBRARY_ROOT))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"
