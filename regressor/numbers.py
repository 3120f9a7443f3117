"""Numbers as short token sequences for the decoder, and the grammar that keeps samples valid.

A number is always `number_len = D + 2` tokens: `[sign][d1]...[dD][exponent]`, read as
`sign * d1.d2...dD * 10**exponent`. For example, with D = 4:

    123.456  -> + 1 2 3 5 E2        (rounded to 4 significant digits, not truncated)
    9.9996   -> + 1 0 0 0 E1        (rounding carries into the exponent)
    -0.5     -> - 5 0 0 0 E-1
    0.0      -> + 0 0 0 0 E<emin>   (canonical zero: the only sequence whose d1 is 0; -0.0 too)
    nan      -> <nan> <pad> ... <pad>  (likewise <+inf> and <-inf>: the sign slot says it all)

With `CodecConfig.exponent_first` the exponent comes right after the sign, `[sign][exponent]
[d1]...[dD]` (123.456 -> + E2 1 2 3 5): the decoder then picks the decade before the digits, coarse
to fine. Internally every number is handled in the first layout; `encode`, `decode` and
`allowed_mask` translate at the edges, so the two orders write the same language.

Range (`CodecConfig.exponent_min .. exponent_max`, by default every finite float64):
- overflow: a value whose rounded exponent is above `exponent_max` clamps to the largest
  representable magnitude `9.99..9 * 10**exponent_max` with its sign;
- underflow: a value below `10**exponent_min` rounds to the nearest representable value, which is
  `1.00..0 * 10**exponent_min` from half of that upwards and zero below. With the default range
  nothing underflows: the smallest subnormal, 4.9e-324, is `+ 4 9 4 1 E-324`;
- decoding clamps to the float64 range: `+ 9 9 9 9 E308` is above float64's max, so it decodes to
  1.797...e308 rather than inf (inf comes only from the inf tokens).

Several objectives per record: M values are M numbers one after the other, `seq_len = M *
number_len` tokens, and the grammar restarts at every number. `encode` takes [N] (M = 1) or
[N, M] values; `decode` returns [...] for M = 1 (callers of one objective see no extra axis) and
[..., M] otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from regressor.config import CodecConfig

PAD, BOS, PLUS, MINUS, NAN, POS_INF, NEG_INF = range(7)
DIGIT0 = 7  # ids 7..16 are the digits 0..9
EXPONENT0 = 17  # ids 17.. are the exponents exponent_min..exponent_max
SPECIALS = (NAN, POS_INF, NEG_INF)
FLOAT_MAX = np.finfo(np.float64).max


class NumberCodec:
    """float64 <-> fixed-length token ids, plus `allowed_mask` for constrained decoding."""

    def __init__(self, cfg: CodecConfig | None = None) -> None:
        cfg = cfg or CodecConfig()
        self.digits = cfg.mantissa_digits
        self.exponent_min = cfg.exponent_min
        self.exponent_max = cfg.exponent_max
        self.num_objectives = cfg.num_objectives
        self.number_len = self.digits + 2  # tokens of one number
        # Two numbers it writes differ by at least this fraction of their size: with 4 digits,
        # 9.999 and 10.00 by 1e-4 of it, 1.000 and 1.001 by 1e-3.
        self.resolution = 10.0**-self.digits
        self.exponent_first = cfg.exponent_first
        # emitted[i] = canonical[_emitted[i]], canonical = [sign, d1..dD, exponent]
        last = self.number_len - 1
        self._emitted = [0, last, *range(1, last)] if self.exponent_first else list(range(last + 1))
        self._canonical = list(np.argsort(self._emitted))
        self.seq_len = self.num_objectives * self.number_len  # tokens of one record's values
        self.vocab_size = EXPONENT0 + cfg.exponent_max - cfg.exponent_min + 1
        self.bos_id = BOS
        self.pad_id = PAD
        self.zero_exponent_id = EXPONENT0  # zero's exponent slot: the smallest exponent
        self.token_strings = [
            *("<pad>", "<bos>", "+", "-", "<nan>", "<+inf>", "<-inf>"),
            *(str(d) for d in range(10)),
            *(f"E{e}" for e in range(cfg.exponent_min, cfg.exponent_max + 1)),
        ]
        self._masks = self._grammar_masks()

    # ---- encoding -------------------------------------------------------------------------------

    @property
    def value_shape(self) -> tuple[int, ...]:
        """The trailing shape of one record's values: () for one objective, (M,) for several."""
        return () if self.num_objectives == 1 else (self.num_objectives,)

    def encode(self, values: Sequence[float] | np.ndarray) -> torch.Tensor:
        """float values [N] (M = 1) or [N, M] -> token ids long [N, seq_len = M * number_len]."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(flat) % self.num_objectives:
            raise ValueError(f"expected {self.num_objectives} values per record")
        rows = [self._encode_one(float(x)) for x in flat]
        n = len(flat) // self.num_objectives
        ids = torch.tensor(rows, dtype=torch.long).reshape(-1, self.number_len)
        return ids[:, self._emitted].reshape(n, self.seq_len)

    def unwritable(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """bool [N]: which finite values the range cannot hold, and would be written clamped:
        above `9.99..9 * 10**exponent_max`, or nonzero below half of `10**exponent_min` (zero).
        With the default range, none; `exponent_min: -12` writes 3e-13 as 0."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        return np.array([self._out_of_range(abs(float(x))) for x in flat], dtype=bool)

    def _out_of_range(self, magnitude: float) -> bool:
        if not math.isfinite(magnitude) or magnitude == 0.0:
            return False
        exponent = int(f"{magnitude:.{self.digits - 1}e}".split("e")[1])  # as `_round` rounds
        return exponent > self.exponent_max or magnitude < 0.5 * 10.0**self.exponent_min

    def _encode_one(self, x: float) -> list[int]:
        filler = [PAD] * (self.number_len - 1)
        if math.isnan(x):
            return [NAN, *filler]
        if math.isinf(x):
            return [POS_INF if x > 0 else NEG_INF, *filler]
        sign = MINUS if x < 0 else PLUS
        digits, exponent = self._round(abs(x))
        if digits is None:
            return self._zero()
        return [sign, *(DIGIT0 + d for d in digits), EXPONENT0 + exponent - self.exponent_min]

    def _round(self, magnitude: float) -> tuple[list[int] | None, int]:
        """|x| -> (D significant digits, exponent) in range, or (None, 0) for zero.

        Python's `%e` formatting rounds the exact binary value correctly (ties to even) and
        carries into the exponent (9.9996 -> '1.000e+01'); a log10-based vectorised version
        mis-rounds near powers of ten. Encoding runs once per dataset, so exactness wins.
        """
        if magnitude == 0.0:
            return None, 0
        mantissa, exponent = f"{magnitude:.{self.digits - 1}e}".split("e")
        digits, e = [int(c) for c in mantissa.replace(".", "")], int(exponent)
        if e > self.exponent_max:
            return [9] * self.digits, self.exponent_max
        if e < self.exponent_min:
            if magnitude < 0.5 * 10.0**self.exponent_min:
                return None, 0
            return [1] + [0] * (self.digits - 1), self.exponent_min
        return digits, e

    def _zero(self) -> list[int]:
        return [PLUS, *([DIGIT0] * self.digits), self.zero_exponent_id]

    # ---- decoding -------------------------------------------------------------------------------

    def decode(self, ids: torch.Tensor) -> np.ndarray:
        """Token ids long [..., seq_len] -> float64 [...] (M = 1) or [..., M].

        A number outside the grammar decodes to NaN (only that objective, not its neighbours).
        """
        ids = torch.as_tensor(ids).detach().cpu().long()
        batch_shape = (*ids.shape[:-1], *self.value_shape)
        ids = ids.reshape(-1, self.number_len).numpy()[:, self._canonical]  # [N * M, number_len]
        sign, digits, exp_id = ids[:, 0], ids[:, 1:-1] - DIGIT0, ids[:, -1] - EXPONENT0
        mantissa = (digits * 10 ** np.arange(self.digits - 1, -1, -1)).sum(1)  # int64 [N]
        value = np.where(sign == MINUS, -1.0, 1.0) * self._scale(mantissa, exp_id)
        value = np.clip(value, -FLOAT_MAX, FLOAT_MAX)  # 9.999e308 is not a float64
        value[sign == POS_INF] = np.inf
        value[sign == NEG_INF] = -np.inf
        value[~self._grammatical(ids) | (sign == NAN)] = np.nan
        return value.reshape(batch_shape)

    def _scale(self, mantissa: np.ndarray, exp_id: np.ndarray) -> np.ndarray:
        """mantissa * 10**(exponent - D + 1) as float64, correctly rounded when |power| <= 22.

        Powers of ten up to 1e22 are exact doubles, so one multiplication or division by them
        rounds once (the classic fast path of decimal parsing). Beyond that the power is split in
        two so that neither factor overflows nor goes subnormal before the final product.
        """
        power = np.clip(exp_id, 0, None) + self.exponent_min - (self.digits - 1)
        with np.errstate(over="ignore"):
            up = 10.0 ** np.clip(power, 0, 300).astype(np.float64)
            up2 = 10.0 ** np.clip(power - 300, 0, None).astype(np.float64)
            down = 10.0 ** np.clip(-power, 0, 300).astype(np.float64)
            down2 = 10.0 ** np.clip(-power - 300, 0, None).astype(np.float64)
            return mantissa.astype(np.float64) * up * up2 / down / down2

    def _grammatical(self, ids: np.ndarray) -> np.ndarray:
        """bool [N]: the rows `allowed_mask` would have let through (tests check they agree).

        Written out on the ids rather than replaying `allowed_mask`, which builds [N, vocab]
        masks per step: decoding a large batch stays cheap.
        """
        sign, digits, exp_id = ids[:, 0], ids[:, 1:-1] - DIGIT0, ids[:, -1]
        special = np.isin(sign, SPECIALS) & (ids[:, 1:] == PAD).all(1)
        in_range = ((digits >= 0) & (digits <= 9)).all(1)
        in_range &= (exp_id >= EXPONENT0) & (exp_id < self.vocab_size)
        leading_zero = digits[:, 0] == 0
        zero = (sign == PLUS) & (digits == 0).all(1) & (exp_id == self.zero_exponent_id)
        number = np.isin(sign, (PLUS, MINUS)) & in_range & (~leading_zero | zero)
        return special | number

    # ---- grammar --------------------------------------------------------------------------------

    def _grammar_masks(self) -> dict[str, torch.Tensor]:
        """The few distinct sets of allowed tokens, bool [vocab_size] each."""

        def only(ids: Sequence[int] | range) -> torch.Tensor:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[list(ids)] = True
            return mask

        return {
            "first": only([PLUS, MINUS, *SPECIALS]),
            "pad": only([PAD]),
            "digits": only(range(DIGIT0, DIGIT0 + 10)),
            "nonzero": only(range(DIGIT0 + 1, DIGIT0 + 10)),
            "zero": only([DIGIT0]),
            "exponents": only(range(EXPONENT0, self.vocab_size)),
            "zero_exponent": only([self.zero_exponent_id]),
        }

    def allowed_mask(self, prev: torch.Tensor) -> torch.Tensor:
        """Which tokens may come next: prefix long [B, t] (no bos) -> bool [B, vocab_size].

        Position 0 is the sign or a special; after a special only <pad>; after `-` the first
        digit is 1-9 (zero is `+` only); a leading 0 forces the rest of zero's canonical form.
        With several objectives the same rules apply to the number being written.
        """
        if prev.shape[1] >= self.seq_len:
            raise ValueError(f"a record has {self.seq_len} tokens; prefix has {prev.shape[1]}")
        start = prev.shape[1] - prev.shape[1] % self.number_len
        # Only the current number's own prefix; the rules' tables live on the CPU, so the mask
        # is built there and moved to the prefix's device (a no-op on the CPU).
        return self._number_mask(prev[:, start:].cpu()).to(prev.device)

    def _number_mask(self, prev: torch.Tensor) -> torch.Tensor:
        """allowed_mask for the prefix [B, t] of one number, t < number_len, on the CPU."""
        m = self._masks
        batch, t = prev.shape
        if t == 0:
            return m["first"].expand(batch, -1)
        special = _isin(prev[:, 0], SPECIALS)[:, None]  # [B, 1]
        if self.exponent_first:
            return torch.where(special, m["pad"], self._exponent_first_mask(prev))
        if t == 1:
            negative = (prev[:, 0] == MINUS)[:, None]
            normal = torch.where(negative, m["nonzero"], m["digits"])
        else:
            is_zero = (prev[:, 1] == DIGIT0)[:, None]
            last = t == self.number_len - 1
            free, forced = (
                (m["exponents"], m["zero_exponent"]) if last else (m["digits"], m["zero"])
            )
            normal = torch.where(is_zero, forced, free)
        return torch.where(special, m["pad"], normal)

    def _exponent_first_mask(self, prev: torch.Tensor) -> torch.Tensor:
        """The grammar above in the order `[sign][exponent][d1..dD]`, prefix [B, t >= 1] ->
        [B, vocab]: any exponent; then a leading 0 only after `+` and the smallest exponent
        (zero's form), which forces the remaining digits to 0."""
        m = self._masks
        t = prev.shape[1]
        if t == 1:
            return m["exponents"].expand(len(prev), -1)
        if t == 2:
            zero_allowed = ((prev[:, 0] == PLUS) & (prev[:, 1] == self.zero_exponent_id))[:, None]
            return torch.where(zero_allowed, m["digits"], m["nonzero"])
        return torch.where((prev[:, 2] == DIGIT0)[:, None], m["zero"], m["digits"])

    def describe(self, ids: torch.Tensor) -> list[str]:
        """Readable tokens of each row of ids [N, seq_len], for debugging; numbers joined by |."""
        return [self._describe_row(row) for row in ids.tolist()]

    def _describe_row(self, row: list[int]) -> str:
        numbers = [row[i : i + self.number_len] for i in range(0, len(row), self.number_len)]
        return " | ".join(" ".join(self.token_strings[i] for i in n) for n in numbers)


def _isin(x: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    return torch.isin(x, torch.tensor(ids, device=x.device))
