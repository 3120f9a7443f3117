"""A trained regressor as one portable bundle: weights, tokenizer, codec and configs.

The bundle is a plain directory (`bundle.json`, `tokenizer.json`, `weights.pt`) so MLflow can
ship it as an artifact and a fresh process can load it without any pickled Python object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regressor.config import CodecConfig, ModelConfig
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec
from regressor.sampling import sample, summarize
from regressor.serialize import DEFAULT_PRIORITY, serialize
from regressor.vocab import InputTokenizer

BUNDLE_FILE = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "weights.pt"


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
        }
        (directory / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        directory = Path(directory)
        bundle = json.loads((directory / BUNDLE_FILE).read_text())
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
    ) -> dict[str, np.ndarray]:
        samples = self.sample_texts(texts, num_samples, temperature, seed=seed)
        summary = summarize(samples, quantiles)
        summary["samples"] = samples
        return summary
