"""A trained regressor as one portable bundle: weights, tokenizer, codec and configs.

The bundle is a plain directory (`bundle.json`, `tokenizer.json`, `weights.pt`) so MLflow can
ship it as an artifact and a fresh process can load it without any pickled Python object.

A predictor may be an ensemble: K member models that share the tokenizer, codec and configs
and differ in their weights (in training, in their seed). Their samples are pooled before the
median, which on small data beat any single model (README "Accuracy"). Member 0's weights stay
in `weights.pt`, member j's in `weights_<j>.pt`, and `bundle.json` names K. Where the target is
relative to a baseline (`relative_to`), some members may learn the target itself instead
(`absolute_members`): the two forms err on different records, so their pool beats either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regressor.calibration import IntervalScale, fit_interval_scale
from regressor.config import CodecConfig, ModelConfig
from regressor.dataset import Examples
from regressor.decoder_only import build_model
from regressor.environment import fast_autocast
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec

# `check_sampling` stays importable from here: the pyfunc files of versions registered before
# it moved to `sampling` import it from this module.
from regressor.sampling import check_sampling, sample, summarize
from regressor.serialize import DEFAULT_PRIORITY, serialize
from regressor.targets import scale_of
from regressor.vocab import InputTokenizer

logger = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "weights.pt"
CHECKED_FILES = (TOKENIZER_FILE, WEIGHTS_FILE)  # of a one-model bundle (`Predictor.bundle_files`)
# Member j draws its samples with the seed `seed + j * MEMBER_SEED_STRIDE` (member 0 with `seed`
# itself), so the members of one call never share a stream; each input then draws from its own
# generator, seeded by that and its token ids (`input_seed`).
MEMBER_SEED_STRIDE = 1_000_003
# Sampling pads an input to a multiple of this many tokens, whatever its batch (`sampled_width`).
PAD_STEP = 32
BUNDLE_DIGEST = "bundle_sha256"  # bundle.json's own checksum (`bundle_digest`)


class CorruptBundleError(ValueError):
    """A bundle file is missing or its bytes differ from the checksum written at save time."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bundle_digest(bundle: Mapping[str, Any]) -> str:
    """sha256 of a bundle.json's content but this digest, as canonical JSON: the file cannot
    name its own bytes' checksum, and a flipped digit of the conformal scale loaded unseen."""
    content = {k: v for k, v in bundle.items() if k != BUNDLE_DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def verify_bundle(directory: Path, checksums: dict[str, str]) -> None:
    """Every file named in `checksums` exists with those bytes (bundles saved before checksums
    existed carry none and are not checked)."""
    for name, expected in checksums.items():
        path = directory / name
        if not path.is_file():
            raise CorruptBundleError(f"{path} is missing")
        if sha256_file(path) != expected:
            raise CorruptBundleError(f"{path} is corrupted (sha256 differs from the saved one)")


def weights_file(j: int) -> str:
    """Member j's weights in a bundle: member 0 keeps the single model's name, so a one-model
    bundle has the layout it had before ensembles."""
    return WEIGHTS_FILE if j == 0 else f"weights_{j}.pt"


def member_seed(seed: int, j: int) -> int:
    """The seed of member j's sampling for a call made with `seed`."""
    return seed + MEMBER_SEED_STRIDE * j


def input_seed(seed: int, ids: Sequence[int]) -> int:
    """The seed of one input's draws: a hash of the call's (member's) seed and the input's
    token ids, so the same input gets the same samples whatever else the call holds, alone or
    in any batch."""
    digest = hashlib.blake2b(str(seed).encode(), digest_size=8)
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1  # below 2**63


def sample_shares(num_samples: int, members: int) -> list[int]:
    """How many of `num_samples` each member draws: as even as possible, the first members one
    more when it does not divide (with fewer samples than members, the last ones draw none)."""
    base, extra = divmod(num_samples, members)
    return [base + (j < extra) for j in range(members)]


def same_tokenizer(a: InputTokenizer, b: InputTokenizer) -> bool:
    """The same vocabulary and merges: equal token ids for every text."""
    return a is b or a._tokenizer.to_str() == b._tokenizer.to_str()


def pad_batch(
    ids: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `width`, by default the longest row of *this* batch: src_ids [B,S] long,
    src_mask [B,S] bool."""
    width = width or max([1, *(len(row) for row in ids)])
    src = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        src[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]
    return src, mask


def sampled_width(length: int, cap: int) -> int:
    """The width an input of `length` tokens is padded to when sampled: a function of its own
    length only. Attention over masked padding is not bit-exact across widths (its reductions
    change order with the key length, in bf16 by ~1e-2), so an input padded to its batch's
    longest row drew other samples beside a longer one; some moved by a whole decade."""
    return min(cap, max(PAD_STEP, -(-length // PAD_STEP) * PAD_STEP))


def width_batches(order: np.ndarray, widths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """`order` cut into runs of at most `batch_size` inputs of one width each."""
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start + 1
        width = widths[order[start]]
        while end < len(order) and end - start < batch_size and widths[order[end]] == width:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


@dataclass
class Predictor:
    # The member models, at least one; `model` is the first (the only one unless an ensemble).
    # A bare model is accepted too, as before ensembles (`Predictor(model, tokenizer, ...)`).
    members: list[nn.Module]
    tokenizer: InputTokenizer
    codec: NumberCodec
    model_config: ModelConfig
    codec_config: CodecConfig
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    metadata: dict = field(default_factory=dict)
    # The config path the decoder's number is relative to (`regressor.targets`); None: absolute.
    relative_to: str | None = None
    # Members that learn the target itself although `relative_to` is set (a mixed ensemble).
    absolute_members: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.members, nn.Module) and not isinstance(self.members, nn.ModuleList):
            self.members = [self.members]
        self.members = list(self.members)
        if not self.members:
            raise ValueError("a predictor needs at least one model")
        self.absolute_members = tuple(sorted(set(self.absolute_members)))
        if any(not 0 <= j < len(self.members) for j in self.absolute_members):
            raise ValueError(f"absolute_members {self.absolute_members} name no member")
        if self.codec_config.num_objectives != 1:  # its draws, summaries and scale read one
            raise ValueError(
                f"a predictor reads one number per record; the codec writes "
                f"{self.codec_config.num_objectives} (several are for the sampler only)"
            )

    @property
    def model(self) -> EncoderDecoder:
        """The first member: the model itself unless this is an ensemble."""
        return self.members[0]

    @model.setter
    def model(self, value: nn.Module) -> None:
        self.members[0] = value

    @property
    def ensemble_size(self) -> int:
        return len(self.members)

    def num_parameters(self) -> int:
        """Parameters of all members together."""
        return sum(model.num_parameters() for model in self.members)

    def learns_relative(self, j: int = 0) -> bool:
        """Whether member j's decoder writes target / baseline (else the target itself)."""
        return self.relative_to is not None and j not in self.absolute_members

    def model_targets(self, examples: Examples) -> np.ndarray:
        """What this (one-model) predictor's decoder learns for `examples`: their ratios to
        their baselines when it learns relative targets, else the targets themselves."""
        return examples.model_targets if self.learns_relative() else examples.targets

    @classmethod
    def create(
        cls,
        model_config: ModelConfig,
        codec_config: CodecConfig,
        tokenizer: InputTokenizer,
        priority: Sequence[str] = DEFAULT_PRIORITY,
        relative_to: str | None = None,
        ensemble_size: int = 1,
        absolute_members: Sequence[int] = (),
        seed: int | None = None,
    ) -> Predictor:
        """Freshly initialised members, drawn from torch's global generator, which `seed` seeds
        first: a process starts it from a random seed, so without one a retrain on the same data
        starts from other weights."""
        if seed is not None:
            torch.manual_seed(seed)
        codec = NumberCodec(codec_config)
        members = [
            build_model(model_config, tokenizer.vocab_size, codec.vocab_size)
            for _ in range(ensemble_size)
        ]
        return cls(
            members,
            tokenizer,
            codec,
            model_config,
            codec_config,
            tuple(priority),
            {},
            relative_to,
            tuple(absolute_members),
        )

    def member(self, j: int) -> Predictor:
        """Member j alone, in its own target form. It shares the member's module, so training
        the view (`fit`) trains the member in place; metadata is a copy."""
        return dataclasses.replace(
            self,
            members=[self.members[j]],
            metadata=dict(self.metadata),
            absolute_members=(0,) if j in self.absolute_members else (),
        )

    def differences(self, other: Predictor) -> list[str]:
        """What `other` reads or writes differently: the parts ensemble members must share."""
        shared = {
            "model config": self.model_config == other.model_config,
            "codec config": self.codec_config == other.codec_config,
            "tokenizer": same_tokenizer(self.tokenizer, other.tokenizer),
            "priority": self.priority == other.priority,
            "relative_to": self.relative_to == other.relative_to,
        }
        return [name for name, same in shared.items() if not same]

    @classmethod
    def ensemble(cls, predictors: Sequence[Predictor]) -> Predictor:
        """One predictor pooling the members of `predictors` (ensembles themselves, or single
        models), which must share tokenizer, codec, model config, priority and baseline.

        Metadata is the first's without its conformal interval scale: a scale fitted on one
        model's intervals does not fit the pooled, wider ones, so calibrate the ensemble anew.
        """
        if not predictors:
            raise ValueError("an ensemble needs at least one member")
        first = predictors[0]
        for j, other in enumerate(predictors[1:], start=1):
            differs = first.differences(other)
            if differs:
                raise ValueError(
                    f"cannot ensemble: predictor {j} differs from predictor 0 in its "
                    f"{', '.join(differs)} (members must read and write numbers alike)"
                )
        metadata = {k: v for k, v in first.metadata.items() if k != "interval_scale"}
        absolute, offset = [], 0  # each predictor's absolute members, renumbered in the pool
        for predictor in predictors:
            absolute += [offset + j for j in predictor.absolute_members]
            offset += predictor.ensemble_size
        return dataclasses.replace(
            first,
            members=[m for p in predictors for m in p.members],
            metadata=metadata,
            absolute_members=tuple(absolute),
        )

    def bundle_files(self) -> tuple[str, ...]:
        """The files `save` writes and checksums, besides `bundle.json`."""
        return (TOKENIZER_FILE, *(weights_file(j) for j in range(self.ensemble_size)))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        for j, model in enumerate(self.members):
            torch.save(model.state_dict(), directory / weights_file(j))
        bundle = {
            "model_config": self.model_config.model_dump(mode="json"),
            "codec_config": self.codec_config.model_dump(mode="json"),
            "priority": list(self.priority),
            "relative_to": self.relative_to,
            "absolute_members": list(self.absolute_members),
            "ensemble_size": self.ensemble_size,
            "metadata": self.metadata,
            # Checked on load: a truncated or altered artifact fails loudly, never predicts.
            "checksums": {name: sha256_file(directory / name) for name in self.bundle_files()},
        }
        bundle[BUNDLE_DIGEST] = bundle_digest(bundle)
        (directory / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        """The bundle saved in `directory`; a `CorruptBundleError` naming the file when any part
        is missing, altered (checksums: bundle.json's own too, when saved with one) or does not
        build a model."""
        directory, path = Path(directory), Path(directory) / BUNDLE_FILE
        try:
            bundle = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptBundleError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(bundle, dict):
            raise CorruptBundleError(f"{path} is not a bundle (not a JSON object)")
        if BUNDLE_DIGEST in bundle and bundle[BUNDLE_DIGEST] != bundle_digest(bundle):
            raise CorruptBundleError(f"{path} is corrupted (sha256 differs from the saved one)")
        verify_bundle(directory, bundle.get("checksums", {}))
        try:
            return cls._from_bundle(directory, bundle)
        except CorruptBundleError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # valid JSON, bad content
            raise CorruptBundleError(f"{path} does not build a model: {exc!r}") from exc

    @classmethod
    def _from_bundle(cls, directory: Path, bundle: dict[str, Any]) -> Predictor:
        ensemble_size = bundle.get("ensemble_size", 1)  # bundles saved before ensembles: one
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise CorruptBundleError(f"{directory / BUNDLE_FILE}: bad ensemble_size")
        tokenizer = InputTokenizer.load(directory / TOKENIZER_FILE)
        predictor = cls.create(
            ModelConfig.model_validate(bundle["model_config"]),
            CodecConfig.model_validate(bundle["codec_config"]),
            tokenizer,
            bundle["priority"],
            bundle.get("relative_to"),  # bundles saved before relative targets had none
            ensemble_size,
            bundle.get("absolute_members", ()),  # nor before mixed ensembles
        )
        for j, model in enumerate(predictor.members):
            path = directory / weights_file(j)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
        predictor.metadata = bundle.get("metadata", {})
        return predictor

    def text_of(self, record: dict) -> str:
        return serialize(record, self.priority, self.model_config.max_input_tokens)

    def scale_of(self, record: dict, name: str = "a record") -> float:
        """The baseline a record's prediction is scaled by: 1.0 unless the target is relative."""
        if self.relative_to is None:
            return 1.0
        return scale_of(record.get("config") or {}, self.relative_to, name)

    def input_char_budget(self) -> int:
        """Characters of a text that can reach the model: no token covers more than
        `max_token_chars` of them, so the first `max_input_tokens` tokens lie within half of
        this many. Twice that, because BPE merges near a cut may differ from those of the whole
        text: the budget's tokens stay far enough from it to come out the same."""
        return 2 * self.model_config.max_input_tokens * self.tokenizer.max_token_chars

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids cut to the input budget. A text is cut to `input_char_budget` characters
        first: tokenizing a 5 MB text whole took seconds and a GB, to keep its first few hundred
        ids."""
        budget = self.input_char_budget()
        cut = [text[:budget] for text in texts]
        return self.tokenizer.encode_batch(cut, self.model_config.max_input_tokens)

    def sample_texts(
        self,
        texts: Sequence[str],
        num_samples: int = 32,
        temperature: float = 1.0,
        batch_size: int = 32,
        seed: int = 0,
        scales: np.ndarray | None = None,
    ) -> np.ndarray:
        """Sampled decodes, float64 [N, num_samples]; inputs are batched by similar length.

        An ensemble splits `num_samples` among its members (`sample_shares`), member j drawing
        with a generator seeded `member_seed(seed, j)`; the columns are member 0's draws, then
        member 1's, ..: pooled, so the median and quantiles are the ensemble's.

        `scales` [N] are the records' baselines when the target is relative: each row of a
        relative member's decoded ratios is multiplied by its own (an absolute member's draws are
        the target already), so the result is in the target's unit either way.
        """
        if self.relative_to is not None and scales is None:
            raise ValueError(
                f"this model predicts relative to {self.relative_to!r}: pass each text's scale"
            )
        check_sampling(num_samples, temperature)
        num_samples = int(num_samples)  # 32.0 passes the check; numpy shapes need an int
        ids = self.encode_texts(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")
        shares = sample_shares(num_samples, self.ensemble_size)
        baselines = None if scales is None else np.asarray(scales, dtype=np.float64)[:, None]
        draws = []
        for j, (model, share) in enumerate(zip(self.members, shares, strict=True)):
            if share == 0:
                continue
            draw = self._draw(
                model, ids, order, share, temperature, batch_size, member_seed(seed, j)
            )
            scaled = baselines is not None and self.learns_relative(j)
            draws.append(draw * baselines if scaled else draw)
        return np.concatenate(draws, axis=1) if draws else np.empty((len(ids), 0))

    def _draw(
        self,
        model: nn.Module,
        ids: list[list[int]],
        order: np.ndarray,
        num_samples: int,
        temperature: float,
        batch_size: int,
        seed: int,
    ) -> np.ndarray:
        """One model's `num_samples` decodes of every input [N, num_samples], batches taken in
        `order` (by length) among inputs of one padded width (`sampled_width`), each input with
        its own generator (`input_seed`): its samples do not depend on the rest of the call."""
        out = np.empty((len(ids), num_samples), dtype=np.float64)
        seeds = [input_seed(seed, row) for row in ids]
        cap = max([self.model_config.max_input_tokens, *(len(row) for row in ids)])  # no rows too
        widths = [sampled_width(len(row), cap) for row in ids]
        model.eval()
        for chunk in width_batches(order, widths, batch_size):
            rows = [ids[i] for i in chunk]
            src, mask = pad_batch(rows, self.tokenizer.pad_id, widths[chunk[0]])
            with fast_autocast():  # emulated bf16 decodes slower than fp32
                out[chunk] = sample(
                    model,
                    self.codec,
                    src,
                    mask,
                    num_samples,
                    temperature,
                    row_seeds=[seeds[i] for i in chunk],
                )
        return out

    def predict_texts(
        self,
        texts: Sequence[str],
        num_samples: int = 32,
        temperature: float = 1.0,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        seed: int = 0,
        tasks: Sequence[str | None] | None = None,
        scales: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Sample summaries per text, in the target's unit (`scales`: see `sample_texts`); the
        shipped conformal scale, if any, recalibrates every quantile and std alike, whichever
        quantiles are asked for (each text's task's own scale when `tasks` names one it was
        fitted for; `IntervalScale.apply_summary`). The scale holds at the temperature it was
        fitted at; at another the quantiles stay as sampled (`scale_at`)."""
        samples = self.sample_texts(texts, num_samples, temperature, seed=seed, scales=scales)
        summary = summarize(samples, quantiles)
        scale = self.scale_at(temperature)
        if scale is not None:
            summary = scale.apply_summary(summary, tasks)
        summary["samples"] = samples
        return summary

    def interval_scale(self) -> IntervalScale | None:
        """The conformal scale of the q10..q90 interval fitted at training time, if any."""
        fitted = self.metadata.get("interval_scale")
        return None if fitted is None else IntervalScale(**fitted)

    def scale_at(self, temperature: float) -> IntervalScale | None:
        """The conformal scale if it was fitted at `temperature`, else None with a warning: the
        draws' spread changes with the temperature, so a scale fitted at 1.0 and applied at
        0.25 covered 0.45 of truths for a nominal 0.8, a claim of calibration it cannot keep."""
        scale = self.interval_scale()
        if scale is None or math.isclose(scale.temperature, temperature):
            return scale
        logger.warning(
            "intervals as sampled, not calibrated: the conformal scale was fitted at temperature "
            "%g, and these draws are at %g",
            scale.temperature,
            temperature,
        )
        return None

    def calibrate(
        self,
        texts: Sequence[str],
        targets: np.ndarray,
        num_samples: int,
        tasks: Sequence[str] | None = None,
        min_task_records: int | None = None,
        scales: np.ndarray | None = None,
        temperature: float = 1.0,
    ) -> float:
        """Fit the q10..q90 conformal scale on held-out (validation) records, per task too when
        `tasks` and `min_task_records` are given, and keep it in `metadata` so it ships in the
        bundle. Sample at the `temperature` the model is evaluated and served at: the scale
        holds there only (`scale_at`). Returns the pooled scale (1.0: already calibrated)."""
        self.metadata.pop("interval_scale", None)
        raw = self.predict_texts(
            texts, num_samples, temperature, quantiles=(0.1, 0.5, 0.9), scales=scales
        )
        try:
            scale = fit_interval_scale(
                targets,
                raw["median"],
                raw["q10"],
                raw["q90"],
                0.8,
                tasks,
                min_task_records,
                self.codec.resolution,
            )
        except ValueError:  # no finite prediction to learn from (an untrained model): raw bounds
            return float("nan")
        self.metadata["interval_scale"] = asdict(
            dataclasses.replace(scale, temperature=temperature)
        )
        return scale.scale
