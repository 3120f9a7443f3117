"""The input tokenizer: byte-level BPE trained on the corpus, with every digit its own token.

- Byte-level: text is first mapped to its UTF-8 bytes (GPT-2's printable byte alphabet), and all
  256 bytes are in the vocabulary, so no input is ever unknown: non-ASCII, emoji, control bytes.
- Digits split one by one before BPE, so numbers in configs and logs are read digit by digit
  and no merge like "202" or "00 " hides their value.
- Whitespace is kept as bytes (newlines and indentation carry the structure of configs), and
  merges may cross punctuation and spaces, so repeated key paths and log templates compress.
- `<pad>` is not a string of the tokenizer (its id is one past the BPE vocabulary), so no input
  text, whatever it contains, can ever produce the pad id.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


class InputTokenizer:
    """Text -> token ids for the encoder. Build with `train` or `load`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.pad_id = tokenizer.get_vocab_size()
        self.vocab_size = self.pad_id + 1
        self._max_token_chars: int | None = None

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        split_digits: bool = True,
        split_lines: bool = False,
    ) -> InputTokenizer:
        """BPE merges learnt from `texts`; at most `vocab_size` ids including `<pad>`.

        The result is smaller when the corpus has fewer useful merges (a tiny test corpus).
        `split_digits=False` keeps each run of digits whole before BPE, so merges inside it can make
        a frequent number one token (but never join digits to letters): a source's
        `whole_numbers`, and `bench/accuracy.py --number-tokens whole`. `split_lines=True` never
        merges across a line break (each line, with the break before it, is its own pre-token):
        without digits to split them, short lines such as `opt=on` would otherwise merge into
        a few tokens per record (`bench/deepperf_protocol.py --booleans words`).
        """
        if vocab_size < 257 + 1:
            raise ValueError("vocab_size must cover the 256 bytes and <pad>")
        tokenizer = Tokenizer(models.BPE())
        # No word-splitting regex: a whole key path such as "\nvalues.cpu.mean=" may become one
        # token, which halves the length of config-and-log text.
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        digits = pre_tokenizers.Digits(individual_digits=split_digits)
        lines = [pre_tokenizers.Split("\n", "merged_with_next")] if split_lines else []
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([*lines, digits, byte_level])
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # the last id is <pad>
            min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    def encode_batch(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        """Token ids of each text, at most `max_tokens` of them and cut at the end of a line (no
        padding: batching pads). Digits are one token each, so a cut inside a line could end
        the input mid-number, `param=1016` read as `param=1`; the lines of a serialized record
        run from its most important section to its least, so any whole-line prefix is a
        truncation its priority allows. A first line longer than the budget is cut inside."""
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            encoding.ids[: line_cut(text, encoding.offsets, max_tokens)]
            for text, encoding in zip(texts, encodings, strict=True)
        ]

    def count_tokens(self, text: str) -> int:
        """Exact token count of `text` (for truncation to a token budget)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    @property
    def max_token_chars(self) -> int:
        """An upper bound on the characters one token covers: its longest byte-level string.

        Each character of a byte-level token string is one byte, and a character is at least one
        byte, so a text of c characters has at least c / max_token_chars tokens.
        """
        if self._max_token_chars is None:
            self._max_token_chars = max(len(t) for t in self._tokenizer.get_vocab())
        return self._max_token_chars

    def decode(self, ids: list[int]) -> str:
        """Ids back to text (pad ids dropped), for debugging and tests."""
        return self._tokenizer.decode([i for i in ids if i != self.pad_id])

    def tokens(self, text: str) -> list[str]:
        """The byte-level token strings of `text`, for debugging."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, path: Path) -> InputTokenizer:
        return cls(Tokenizer.from_file(str(path)))


def line_cut(text: str, offsets: list[tuple[int, int]], max_tokens: int) -> int:
    """How many of a text's tokens (their character `offsets`) to keep: all when they fit, else
    the most within `max_tokens` that end at a line break (the next token starts with it, or
    the last kept one ends with it), else `max_tokens`."""
    if len(offsets) <= max_tokens:
        return len(offsets)
    for j in range(max_tokens, 0, -1):
        next_start, last_end = offsets[j][0], offsets[j - 1][1]
        if text[next_start : next_start + 1] == "\n" or text[last_end - 1 : last_end] == "\n":
            return j
    return max_tokens
