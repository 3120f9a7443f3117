"""Which precision `auto` trains in, and the hardware probe it rests on."""

import shutil
from pathlib import Path

import pytest

from regressor.environment import (
    LIBRARY_ROOT,
    code_digest,
    has_fast_bf16,
    numeric_environment,
    resolve_precision,
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


def test_the_code_digest_follows_the_library_source_and_nothing_else(tmp_path: Path):
    copy = tmp_path / "regressor"
    shutil.copytree(LIBRARY_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(copy) == code_digest()
    (copy / "notes.md").write_text("not code")
    assert code_digest(copy) == code_digest()
    model = copy / "model.py"
    model.write_text(model.read_text() + "\n# an edit\n")
    assert code_digest(copy) != code_digest()
