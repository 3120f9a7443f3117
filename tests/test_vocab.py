"""The input tokenizer: trained BPE, single digits, nothing unknown, one JSON file."""

from __future__ import annotations

from pathlib import Path

import pytest

from regressor.vocab import InputTokenizer

CORPUS = [
    "[config]\ncell: c01\ncpu_cores: 64\nmemory_gb: 512\nscheduler: fair\n",
    "[logs]\njob finished in 123 s\njob finished in 98 s\nutil mean=0.73 p95=0.91\n",
    "[config]\ncell: c02\ncpu_cores: 32\nmemory_gb: 256\nscheduler: fifo\n",
] * 20


@pytest.fixture(scope="module")
def tokenizer() -> InputTokenizer:
    return InputTokenizer.train(CORPUS, vocab_size=400)


def test_learns_merges_within_budget(tokenizer: InputTokenizer) -> None:
    assert 257 < tokenizer.vocab_size <= 400
    assert tokenizer.pad_id == tokenizer.vocab_size - 1
    [ids] = tokenizer.encode_batch(["scheduler: fair"], max_tokens=100)
    assert len(ids) < len("scheduler: fair") / 2  # whole words became single tokens


def test_digits_are_single_tokens(tokenizer: InputTokenizer) -> None:
    assert tokenizer.tokens("cpu_cores: 64512")[-5:] == ["6", "4", "5", "1", "2"]


@pytest.mark.parametrize("text", ["naïve Größe ✓", "🚀🔥 ok", "\x00\x07 tabs\tand\nnewlines", ""])
def test_anything_round_trips(tokenizer: InputTokenizer, text: str) -> None:
    [ids] = tokenizer.encode_batch([text], max_tokens=1000)
    assert all(0 <= i < tokenizer.pad_id for i in ids)
    assert tokenizer.decode(ids) == text


def test_pad_is_unreachable_from_text(tokenizer: InputTokenizer) -> None:
    [ids] = tokenizer.encode_batch(["<pad> [PAD] <unk>"], max_tokens=100)
    assert tokenizer.pad_id not in ids


def test_truncates_at_a_line_end_without_padding(tokenizer: InputTokenizer) -> None:
    """Five tokens end inside `cpu_cores: 64`: the cut falls after the last whole line, so the
    model never reads `cpu_cores: 6` (digits are one token each)."""
    out = tokenizer.encode_batch([CORPUS[0], "x"], max_tokens=5)
    full = tokenizer.encode_batch([CORPUS[0]], max_tokens=10_000)[0]
    assert out == [full[: len(out[0])], tokenizer.encode_batch(["x"], 1)[0]]
    assert tokenizer.decode(out[0]) == "[config]\ncell: c01"
    for budget in range(3, len(full)):  # 3 tokens hold the first whole line
        [ids] = tokenizer.encode_batch([CORPUS[0]], budget)
        seen = tokenizer.decode(ids)
        assert len(ids) <= budget
        assert CORPUS[0].startswith(seen)
        assert CORPUS[0][len(seen)] == "\n"
    # Without a whole line in the budget, the cut falls inside: something beats nothing.
    assert tokenizer.encode_batch([CORPUS[0]], 2) == [full[:2]]


def test_save_load_is_identical(tokenizer: InputTokenizer, tmp_path: Path) -> None:
    path = tokenizer.save(tmp_path / "sub" / "tokenizer.json")
    loaded = InputTokenizer.load(path)
    assert (loaded.vocab_size, loaded.pad_id) == (tokenizer.vocab_size, tokenizer.pad_id)
    texts = [*CORPUS[:3], "unseen 🚀 text 42"]
    assert loaded.encode_batch(texts, 64) == tokenizer.encode_batch(texts, 64)


def test_rejects_a_vocabulary_without_room_for_bytes() -> None:
    with pytest.raises(ValueError, match="256 bytes"):
        InputTokenizer.train(CORPUS, vocab_size=200)


def test_whole_numbers_ablation_merges_frequent_numbers() -> None:
    """`split_digits=False` (the tokenization ablation) lets BPE merge a frequent number, which
    the default never does: there every digit stays its own token."""
    texts = ["cores=2048 mem=4096"] * 50
    split = InputTokenizer.train(texts, vocab_size=300)
    whole = InputTokenizer.train(texts, vocab_size=300, split_digits=False)
    digits = [split.decode([i]) for i in split.encode_batch(["2048"], 64)[0]]
    assert digits == ["2", "0", "4", "8"]
    assert len(whole.encode_batch(["cores=2048"], 64)[0]) < len(
        split.encode_batch(["cores=2048"], 64)[0]
    )


def test_split_lines_never_merges_across_a_line_break() -> None:
    """Short letter-only lines (`opt=on`, the `--booleans words` ablation) merge into a few
    tokens per record by default; with `split_lines` a token spans at most one line."""
    texts = ["<config>\nfast=on\ncache=off\nlog=on", "<config>\nfast=off\ncache=on\nlog=off"] * 50
    merged = InputTokenizer.train(texts, vocab_size=300)
    lines = InputTokenizer.train(texts, vocab_size=300, split_lines=True)
    assert any(t.count("Ċ") > 1 for t in merged.tokens(texts[0]))  # Ċ: the byte-level "\n"
    tokens = lines.tokens(texts[0])
    assert all(t.count("Ċ") <= 1 and "Ċ" not in t[1:] for t in tokens)
    assert lines.decode(lines.encode_batch(texts[:1], 64)[0]) == texts[0]
