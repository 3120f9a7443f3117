"""The number codec: rounding, range, specials, and the decoding grammar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regressor.config import CodecConfig
from regressor.numbers import NAN, PAD, NumberCodec

CODEC = NumberCodec(CodecConfig(mantissa_digits=4))
SUBNORMAL_ULP = math.ulp(0.0)  # 5e-324: the spacing of float64 near zero


def tokens(codec: NumberCodec, x: float) -> str:
    return codec.describe(codec.encode([x]))[0]


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (123.456, "+ 1 2 3 5 E2"),  # rounded, not truncated (regress-lm gives 1 2 3 4)
        (9.9996, "+ 1 0 0 0 E1"),  # the carry moves into the exponent
        (-0.5, "- 5 0 0 0 E-1"),
        (0.0, "+ 0 0 0 0 E-324"),
        (-0.0, "+ 0 0 0 0 E-324"),  # one canonical zero
        (5e-324, "+ 4 9 4 1 E-324"),  # the smallest subnormal is in range
        (1.7976931348623157e308, "+ 1 7 9 8 E308"),
        (float("nan"), "<nan> <pad> <pad> <pad> <pad> <pad>"),
        (float("inf"), "<+inf> <pad> <pad> <pad> <pad> <pad>"),
        (-float("inf"), "<-inf> <pad> <pad> <pad> <pad> <pad>"),
    ],
)
def test_encodes_known_values(x: float, expected: str) -> None:
    assert tokens(CODEC, x) == expected


def test_layout_and_vocabulary() -> None:
    assert CODEC.seq_len == 6
    assert CODEC.vocab_size == len(CODEC.token_strings) == 17 + (308 + 324 + 1)
    assert CODEC.token_strings[CODEC.bos_id] == "<bos>"
    assert CODEC.encode(np.array([1.0, 2.0, 3.0])).shape == (3, 6)
    assert CODEC.encode([]).shape == (0, 6)


def test_short_decimals_decode_exactly() -> None:
    values = [300.0, 0.1, 1.234, -7.5e-5, 2.5e18, 1e22, 123.4]
    assert CODEC.decode(CODEC.encode(values)).tolist() == values


def test_decode_keeps_batch_shape() -> None:
    ids = CODEC.encode([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(2, 3, 6)
    assert CODEC.decode(ids).tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_specials_round_trip() -> None:
    out = CODEC.decode(CODEC.encode([float("nan"), float("inf"), -float("inf")]))
    assert math.isnan(out[0])
    assert out[1] == math.inf
    assert out[2] == -math.inf


def test_narrow_range_clamps_overflow_and_rounds_underflow() -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=3, exponent_min=-2, exponent_max=3))
    assert tokens(codec, 1e9) == "+ 9 9 9 E3"  # clamps to the largest magnitude, keeps sign
    assert tokens(codec, -1e9) == "- 9 9 9 E3"
    assert tokens(codec, 9999.6) == "+ 9 9 9 E3"  # rounds up out of range, then clamps
    assert tokens(codec, 0.006) == "+ 1 0 0 E-2"  # nearer to 1e-2 than to 0
    assert tokens(codec, 0.004) == "+ 0 0 0 E-2"  # nearer to 0
    assert tokens(codec, -0.004) == "+ 0 0 0 E-2"


def test_top_of_range_decodes_to_finite() -> None:
    """`9.999e308` is grammatical but above float64's max: it clamps, never becomes inf."""
    ids = torch.tensor([[2, 16, 16, 16, 16, CODEC.vocab_size - 1]])
    assert CODEC.describe(ids) == ["+ 9 9 9 9 E308"]
    assert CODEC.decode(ids)[0] == np.finfo(np.float64).max


def test_the_values_a_narrow_range_writes_clamped_are_told() -> None:
    """What `training.encode_examples` refuses to learn: a label written clamped is wrong."""
    codec = NumberCodec(CodecConfig(mantissa_digits=3, exponent_min=-2, exponent_max=3))
    values = [1e9, -1e9, 9999.6, 9990.0, 0.006, 0.004, -0.004, 0.0, float("nan"), float("inf")]
    assert codec.unwritable(values).tolist() == [1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert not CODEC.unwritable([1.7e308, 5e-324, -1e-300]).any()  # the default range: none


def test_ungrammatical_sequences_decode_to_nan() -> None:
    bad = [
        "- 0 0 0 0 E-324",  # a negative zero
        "+ 0 1 0 0 E-324",  # a leading zero before a non-zero digit
        "+ 1 0 0 0 3",  # a digit in the exponent slot
        "<nan> 1 0 0 0 E1",  # a special not followed by padding
    ]
    index = {s: i for i, s in enumerate(CODEC.token_strings)}
    ids = torch.tensor([[index[s] for s in row.split()] for row in bad])
    assert np.isnan(CODEC.decode(ids)).all()
    assert np.isnan(CODEC.decode(torch.tensor([[10_000, 7, 7, 7, 7, 17]])))[0]


def test_grammar_rules() -> None:
    plus, minus = 2, 3
    first = CODEC.allowed_mask(torch.empty(2, 0, dtype=torch.long))
    assert first.shape == (2, CODEC.vocab_size)
    assert [CODEC.token_strings[i] for i in first[0].nonzero()] == [
        *("+", "-", "<nan>", "<+inf>", "<-inf>")
    ]
    after_sign = CODEC.allowed_mask(torch.tensor([[plus], [minus], [NAN]]))
    assert after_sign[0, 7:17].all()  # 0-9 after +
    assert not after_sign[1, 7]  # no zero after -: zero is + only
    assert after_sign[1, 8:17].all()
    assert after_sign[2].nonzero().flatten().tolist() == [PAD]
    zero_exp = CODEC.allowed_mask(torch.tensor([[plus, 7, 7, 7, 7]]))
    assert zero_exp.nonzero()[:, 1].tolist() == [CODEC.zero_exponent_id]
    with pytest.raises(ValueError, match="tokens"):
        CODEC.allowed_mask(torch.zeros(1, CODEC.seq_len, dtype=torch.long))


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True),
    digits=st.integers(1, 8),
    exponent_first=st.booleans(),
)
def test_round_trip_within_rounding_error(x: float, digits: int, exponent_first: bool) -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=digits, exponent_first=exponent_first))
    y = float(codec.decode(codec.encode([x]))[0])
    bound = 0.5 * 10.0 ** (1 - digits) * abs(x) * (1 + 1e-12) + SUBNORMAL_ULP
    assert abs(y - x) <= bound
    assert math.copysign(1, y) == math.copysign(1, x) or y == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_subnormal=True), min_size=1, max_size=20), st.booleans())
def test_encoded_values_follow_the_grammar(values: list[float], exponent_first: bool) -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=4, exponent_first=exponent_first))
    ids = codec.encode(values)
    for t in range(codec.seq_len):
        allowed = codec.allowed_mask(ids[:, :t])
        assert allowed.gather(1, ids[:, t : t + 1]).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), digits=st.integers(1, 6))
def test_sampling_under_grammar_always_decodes(seed: int, digits: int) -> None:
    """Random logits, masked by the grammar, sampled step by step: every row is a number."""
    codec = NumberCodec(CodecConfig(mantissa_digits=digits, exponent_min=-5, exponent_max=5))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.empty(512, codec.seq_len, dtype=torch.long)
    for t in range(codec.seq_len):
        logits = 3 * torch.randn(512, codec.vocab_size, generator=gen)
        logits = logits.masked_fill(~codec.allowed_mask(ids[:, :t]), float("-inf"))
        ids[:, t] = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    values = codec.decode(ids)
    assert np.array_equal(np.isnan(values), (ids[:, 0] == NAN).numpy())
    finite = np.isfinite(values)
    assert (np.abs(values[finite]) < 1e6).all()


@pytest.mark.parametrize("exponent_first", [False, True])
def test_decode_accepts_exactly_what_the_grammar_allows(exponent_first: bool) -> None:
    """Exhaustive over every id sequence of a tiny codec (20 tokens, 3 slots)."""
    codec = NumberCodec(
        CodecConfig(
            mantissa_digits=1, exponent_min=-1, exponent_max=1, exponent_first=exponent_first
        )
    )
    ids = torch.cartesian_prod(*[torch.arange(codec.vocab_size)] * codec.seq_len)  # [8000, 3]
    allowed = torch.ones(len(ids), dtype=torch.bool)
    for t in range(codec.seq_len):
        allowed &= codec.allowed_mask(ids[:, :t]).gather(1, ids[:, t : t + 1]).squeeze(1)
    assert allowed.sum() == 3 + 2 * 9 * 3 + 1  # specials, ±d·10^e, zero
    rows = ids[:, 0] != NAN  # a <nan> row decodes to NaN grammatical or not
    accepted = ~np.isnan(codec.decode(ids[rows]))
    assert np.array_equal(accepted, allowed[rows].numpy())


# ---- several objectives per record ---------------------------------------------------------------

objective_values = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 6).flatmap(
        lambda m: st.lists(st.lists(objective_values, min_size=m, max_size=m), min_size=1)
    ),
    digits=st.integers(1, 6),
)
def test_several_objectives_round_trip(rows: list[list[float]], digits: int) -> None:
    """M values per record -> M * number_len tokens -> the same M values, each within rounding."""
    values = np.array(rows)  # [N, M]
    codec = NumberCodec(CodecConfig(mantissa_digits=digits, num_objectives=values.shape[1]))
    ids = codec.encode(values)
    assert ids.shape == (len(values), values.shape[1] * (digits + 2))
    decoded = codec.decode(ids)
    assert decoded.shape == (values.shape if values.shape[1] > 1 else values.shape[:1])
    bound = 0.5 * 10.0 ** (1 - digits) * np.abs(values) * (1 + 1e-12) + SUBNORMAL_ULP
    assert (np.abs(decoded.reshape(values.shape) - values) <= bound).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), objectives=st.integers(2, 4))
def test_grammar_repeats_per_objective(seed: int, objectives: int) -> None:
    """Random logits under the grammar, over M numbers in a row: each decodes on its own."""
    codec = NumberCodec(
        CodecConfig(mantissa_digits=2, exponent_min=-3, exponent_max=3, num_objectives=objectives)
    )
    gen = torch.Generator().manual_seed(seed)
    ids = torch.empty(256, codec.seq_len, dtype=torch.long)
    for t in range(codec.seq_len):
        logits = 3 * torch.randn(256, codec.vocab_size, generator=gen)
        logits = logits.masked_fill(~codec.allowed_mask(ids[:, :t]), float("-inf"))
        ids[:, t] = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    values = codec.decode(ids)  # [256, M]
    signs = ids[:, :: codec.number_len]  # [256, M]: the first token of each number
    assert values.shape == (256, objectives)
    assert np.array_equal(np.isnan(values), (signs == NAN).numpy())


def test_several_objectives_layout() -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=2, num_objectives=2))
    ids = codec.encode([[1.5, -0.25]])
    assert codec.describe(ids) == ["+ 1 5 E0 | - 2 5 E-1"]
    assert codec.decode(ids).tolist() == [[1.5, -0.25]]
    with pytest.raises(ValueError, match="2 values per record"):
        codec.encode([1.0, 2.0, 3.0])
    bad = ids.clone()
    bad[0, 1] = 7  # leading zero in the first number only: that number is NaN, not the second
    assert np.isnan(codec.decode(bad)[0, 0])
    assert codec.decode(bad)[0, 1] == -0.25


# ---- exponent first ------------------------------------------------------------------------------

EXPONENT_FIRST = NumberCodec(CodecConfig(mantissa_digits=4, exponent_first=True))


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (123.456, "+ E2 1 2 3 5"),
        (9.9996, "+ E1 1 0 0 0"),  # the carry still moves into the exponent
        (-0.5, "- E-1 5 0 0 0"),
        (0.0, "+ E-324 0 0 0 0"),
        (float("nan"), "<nan> <pad> <pad> <pad> <pad> <pad>"),
    ],
)
def test_exponent_first_layout(x: float, expected: str) -> None:
    assert tokens(EXPONENT_FIRST, x) == expected
    assert EXPONENT_FIRST.decode(EXPONENT_FIRST.encode([x]))[0] == pytest.approx(
        CODEC.decode(CODEC.encode([x]))[0], nan_ok=True
    )


def test_exponent_first_grammar() -> None:
    """The decade is free; a leading 0 only after `+` and the smallest exponent (zero), and then
    only zeros; several objectives restart the grammar at every number."""
    plus, minus, e0 = 2, 3, EXPONENT_FIRST.token_strings.index("E0")
    zero_e = EXPONENT_FIRST.zero_exponent_id
    after_sign = EXPONENT_FIRST.allowed_mask(torch.tensor([[plus], [minus], [NAN]]))
    assert after_sign[0].nonzero().min() == after_sign[1].nonzero().min() == zero_e
    assert after_sign[2].nonzero().flatten().tolist() == [PAD]
    first_digit = EXPONENT_FIRST.allowed_mask(
        torch.tensor([[plus, e0], [plus, zero_e], [minus, zero_e]])
    )
    assert [bool(first_digit[i, 7]) for i in range(3)] == [False, True, False]
    assert first_digit[:, 8:17].all()
    rest = EXPONENT_FIRST.allowed_mask(torch.tensor([[plus, zero_e, 7], [plus, zero_e, 8]]))
    assert rest[0].nonzero().flatten().tolist() == [7]
    assert rest[1, 7:17].all()
    two = NumberCodec(CodecConfig(mantissa_digits=2, num_objectives=2, exponent_first=True))
    assert two.describe(two.encode([[1.5, -0.25]])) == ["+ E0 1 5 | - E-1 2 5"]
    assert two.decode(two.encode([[1.5, -0.25]])).tolist() == [[1.5, -0.25]]
