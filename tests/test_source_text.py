"""A source's `whole_numbers` reaches the pipeline's tokenizer and the training key."""

from __future__ import annotations

from pathlib import Path

from regressor import pipeline
from regressor.config import AppConfig, PromotionRule, load_source_config

TEXTS = ["<config>\ninstance_count=12 data_size_MB=15150"] * 40


def dataset(whole_numbers: bool) -> pipeline.Dataset:
    return pipeline.Dataset({}, "cell-a", "hash-1", {}, whole_numbers)


def test_c3o_reads_numbers_whole_and_lumos_digit_by_digit() -> None:
    """The choices the validation loss made (README "Accuracy"): c3o's numbers are settings."""
    assert load_source_config("c3o").whole_numbers
    assert not load_source_config("lumos").whole_numbers
    assert not load_source_config("demo_fleet").whole_numbers


def test_resumable_tokenizer_keeps_digit_runs_whole_when_asked(tmp_path: Path) -> None:
    whole = pipeline.resumable_tokenizer(tmp_path / "w", TEXTS, 300, split_digits=False)
    split = pipeline.resumable_tokenizer(tmp_path / "s", TEXTS, 300)
    line = ["data_size_MB=15150"]
    assert len(whole.encode_batch(line, 64)[0]) < len(split.encode_batch(line, 64)[0])
    # A resumed run reads the saved tokenizer, whatever it is asked for now.
    again = pipeline.resumable_tokenizer(tmp_path / "w", TEXTS, 300, split_digits=True)
    assert again.encode_batch(line, 64) == whole.encode_batch(line, 64)


def test_number_tokenization_is_part_of_the_training_key() -> None:
    app = AppConfig()
    assert pipeline.training_key(app, dataset(True)) != pipeline.training_key(app, dataset(False))


def test_the_order_of_the_sections_is_part_of_the_training_key_not_the_adaptation_key() -> None:
    """It shapes every text, so the tokenizer and the weights: left out, a source whose
    `section_priority` was edited reused the model trained on the old texts. An adaptation
    reads its shots in its base's order (`pipeline.served_by`), which the base version fixes."""
    app = AppConfig()
    usual = pipeline.Dataset({}, "cell-a", "hash-1", {}, section_priority=("task", "config"))
    other = pipeline.Dataset({}, "cell-a", "hash-1", {}, section_priority=("config", "task"))
    assert pipeline.training_key(app, usual) != pipeline.training_key(app, other)
    base = "models:/textperf/1"
    assert pipeline.adaptation_key(app, usual, base) == pipeline.adaptation_key(app, other, base)


def test_a_holdout_task_left_to_resolve_and_the_same_task_named_train_once() -> None:
    """They hold out the same records: the key compared the setting as written, so naming the
    task the default picks trained a second model of the same data."""
    app = AppConfig()
    named = app.model_copy(update={"split": app.split.model_copy(update={"holdout_task": "t"})})
    data = pipeline.Dataset({}, "t", "hash-1", {})
    assert app.split.holdout_task is None
    assert pipeline.training_key(app, data) == pipeline.training_key(named, data)
    other = pipeline.Dataset({}, "u", "hash-1", {})
    assert pipeline.training_key(app, data) != pipeline.training_key(app, other)


def test_the_registration_key_adds_evaluation_and_the_gate_to_the_training_key() -> None:
    app = AppConfig()
    key = pipeline.registration_key(app, "t1")
    assert key == pipeline.registration_key(AppConfig(), "t1")
    assert key != pipeline.registration_key(app, "t2")
    for update in (
        {"eval": app.eval.model_copy(update={"conformal": not app.eval.conformal})},
        {
            "registry": app.registry.model_copy(
                update={"promotion": PromotionRule(lower_is_better=())}
            )
        },
    ):
        assert pipeline.registration_key(app.model_copy(update=update), "t1") != key
