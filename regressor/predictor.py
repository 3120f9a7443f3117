"""A trained regressor as one portable bundle: weights, tokenizer, codec and configs.

The bundle is a plain directory (`bundle.json`, `tokenizer.json`, `weights.pt`) so MLflow can
ship it as an artifact and a fresh process can load it without any pickled Python object.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from regressor.calibration import IntervalScale, fit_interval_scale
from regressor.config import CodecConfig, ModelConfig
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec
from regressor.sampling import sample, summarize
from regressor.serialize import DEFAULT_PRIORITY, serialize
from regressor.vocab import InputTokenizer

BUNDLE_FILE = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "weights.pt"
CHECKED_FILES = (TOKENIZER_FILE, WEIGHTS_FILE)


class CorruptBundleError(ValueError):
    """A bundle file is missing or its bytes differ from the checksum written at save time."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_bundle(directory: Path, checksums: dict[str, str]) -> None:
    """Every file named in `checksums` exists with those bytes (bundles saved before checksums
    existed carry none and are not checked)."""
    for name, expected in checksums.items():
        path = directory / name
        if not path.is_file():
            raise CorruptBundleError(f"{path} is missing")
        if sha256_file(path) != expected:
            raise CorruptBundleError(f"{path} is corrupted (sha256 differs from the saved one)")


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row of *this* batch: src_ids [B,S] long, src_mask [B,S] bool."""
    width = max([1, *(len(row) for row in ids)])
    src = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        src[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]
    return src, mask


@dataclass
class Predictor:
    model: EncoderDecoder
    tokenizer: InputTokenizer
    codec: NumberCodec
    model_config: ModelConfig
    codec_config: CodecConfig
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    metadata: dict = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        model_config: ModelConfig,
        codec_config: CodecConfig,
        tokenizer: InputTokenizer,
        priority: Sequence[str] = DEFAULT_PRIORITY,
    ) -> Predictor:
        codec = NumberCodec(codec_config)
        model = EncoderDecoder(model_config, tokenizer.vocab_size, codec.vocab_size)
        return cls(model, tokenizer, codec, model_config, codec_config, tuple(priority))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        torch.save(self.model.state_dict(), directory / WEIGHTS_FILE)
        bundle = {
            "model_config": self.model_config.model_dump(mode="json"),
            "codec_config": self.codec_config.model_dump(mode="json"),
            "priority": list(self.priority),
            "metadata": self.metadata,
            # Checked on load: a truncated or altered artifact fails loudly, never predicts.
            "checksums": {name: sha256_file(directory / name) for name in CHECKED_FILES},
        }
        (directory / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        directory = Path(directory)
        try:
            bundle = json.loads((directory / BUNDLE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptBundleError(f"{directory / BUNDLE_FILE} is unreadable: {exc}") from exc
        verify_bundle(directory, bundle.get("checksums", {}))
        tokenizer = InputTokenizer.load(directory / TOKENIZER_FILE)
        predictor = cls.create(
            ModelConfig.model_validate(bundle["model_config"]),
            CodecConfig.model_validate(bundle["codec_config"]),
            tokenizer,
            bundle["priority"],
        )
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        predictor.model.load_state_dict(state)
        predictor.model.eval()
        predictor.metadata = bundle.get("metadata", {})
        return predictor

    def text_of(self, record: dict) -> str:
        return serialize(record, self.priority, self.model_config.max_input_tokens)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch(list(texts), self.model_config.max_input_tokens)

    def sample_texts(
        self,
        texts: Sequence[str],
        num_samples: int = 32,
        temperature: float = 1.0,
        batch_size: int = 32,
        seed: int = 0,
    ) -> np.ndarray:
        """Sampled decodes, float64 [N, num_samples]; inputs are batched by similar length."""
        ids = self.encode_texts(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")
        out = np.empty((len(ids), num_samples), dtype=np.float64)
        generator = torch.Generator().manual_seed(seed)
        self.model.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src, mask = pad_batch([ids[i] for i in chunk], self.tokenizer.pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out[chunk] = sample(
                    self.model, self.codec, src, mask, num_samples, temperature, generator
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
    ) -> dict[str, np.ndarray]:
        """Sample summaries per text; the shipped conformal scale, if any, recalibrates q10/q90
        and std (each text's task's own scale when `tasks` names one it was fitted for)."""
        samples = self.sample_texts(texts, num_samples, temperature, seed=seed)
        summary = summarize(samples, quantiles)
        scale = self.interval_scale()
        if scale is not None and {"q10", "q90"} <= summary.keys():
            summary = scale.apply_summary(summary, tasks)
        summary["samples"] = samples
        return summary

    def interval_scale(self) -> IntervalScale | None:
        """The conformal scale of the q10..q90 interval fitted at training time, if any."""
        fitted = self.metadata.get("interval_scale")
        return None if fitted is None else IntervalScale(**fitted)

    def calibrate(
        self,
        texts: Sequence[str],
        targets: np.ndarray,
        num_samples: int,
        tasks: Sequence[str] | None = None,
        min_task_records: int | None = None,
    ) -> float:
        """Fit the q10..q90 conformal scale on held-out (validation) records, per task too when
        `tasks` and `min_task_records` are given, and keep it in `metadata` so it ships in the
        bundle. Returns the pooled scale (1.0: already calibrated)."""
        self.metadata.pop("interval_scale", None)
        raw = self.predict_texts(texts, num_samples, quantiles=(0.1, 0.5, 0.9))
        try:
            scale = fit_interval_scale(
                targets, raw["median"], raw["q10"], raw["q90"], 0.8, tasks, min_task_records
            )
        except ValueError:  # no finite prediction to learn from (an untrained model): raw bounds
            return float("nan")
        self.metadata["interval_scale"] = asdict(scale)
        return scale.scale
