"""bench/c3o_protocol.py: the C3O notebook's rows and medians, its 90/10 splits, the peers.

The medians are checked against the notebook's own recipe (`get_training_data` in the dataset's
`evaluation/model_performance.ipynb`: pandas groupby on its feature subset, median, filters), run
here on the TSV files directly. Skipped when the dataset is not beside the project.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from regressor.config import PROJECT_ROOT, data_root, load_source_config
from regressor.dataset import to_examples

sys.path.insert(0, str(PROJECT_ROOT / "bench"))  # the bench scripts import each other flat
import c3o_protocol

# The notebook's features and filters per job, as written in its `jobs` list.
NOTEBOOK = {
    "sort": (["data_size_MB"], [("machine_type", "c4.2xlarge"), ("line_length", 100)]),
    "grep": (["data_size_MB", "p_occurrence"], [("machine_type", "m4.2xlarge")]),
    "sgd": (["observations", "features", "iterations"], [("machine_type", "r4.2xlarge")]),
    "kmeans": (["observations", "features", "k"], [("machine_type", "r4.2xlarge")]),
    "pagerank": (["links", "pages", "convergence_criterion"], [("machine_type", "r4.2xlarge")]),
}
ABOVE_TWO_INSTANCES = {"sgd", "kmeans"}


def data_dir() -> Path:
    root = data_root(load_source_config("c3o").root)
    if not (root / "data").is_dir():
        pytest.skip(f"c3o dataset not found at {root}")
    return root


def notebook_medians(root: Path, job: str) -> np.ndarray:
    features, filters = NOTEBOOK[job]
    df = pd.read_csv(root / "data" / f"{job}.tsv", sep="\t")
    g = df.groupby(by=["instance_count", "machine_type", *features])
    med = pd.DataFrame(g.median().to_records())
    for key, value in filters:
        med = med[med[key] == value]
    if job in ABOVE_TWO_INSTANCES:
        med = med[med["instance_count"] > 2]
    return np.sort(med["gross_runtime"].to_numpy(dtype=float))


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    data_dir()
    return c3o_protocol.load_records("c3o", tmp_path_factory.mktemp("c3o_protocol"))


@pytest.mark.parametrize("job", sorted(NOTEBOOK))
def test_job_medians_are_the_notebooks(records: pl.DataFrame, job: str) -> None:
    medians = c3o_protocol.job_medians(records, job)
    expected = notebook_medians(data_dir(), job)
    assert len(medians) == len(expected)
    np.testing.assert_allclose(np.sort(medians["target"].to_numpy()), expected)
    assert set(medians["runs"].to_list()) == {5}  # every configuration was run five times


def test_split_masks_hold_out_a_tenth_rounded_up() -> None:
    masks = c3o_protocol.split_masks(36, 4, seed=0)
    assert [int(m.sum()) for m in masks] == [4, 4, 4, 4]  # sklearn: ceil(0.1 * 36)
    assert len({m.tobytes() for m in masks}) == 4  # the splits differ
    again = c3o_protocol.split_masks(36, 4, seed=0)
    assert all((a == b).all() for a, b in zip(masks, again, strict=True))
    other = c3o_protocol.split_masks(36, 4, seed=1)
    assert any((a != b).any() for a, b in zip(masks, other, strict=True))


def test_peers_beat_the_mean_on_grep(records: pl.DataFrame) -> None:
    examples = to_examples(c3o_protocol.job_medians(records, "grep"))
    mask = c3o_protocol.split_masks(len(examples), 1, seed=0)[0]
    train = examples.take(np.flatnonzero(~mask))
    test = examples.take(np.flatnonzero(mask))
    mean_mape = float(np.mean(np.abs(train.targets.mean() / test.targets - 1)) * 100)
    mapes = c3o_protocol.peer_mapes(train, test, seed=0)
    assert set(mapes) == set(c3o_protocol.PEERS)
    assert all(0 < m < mean_mape for m in mapes.values()), (mapes, mean_mape)
