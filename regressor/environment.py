"""What decides a trained model's weights to the bit besides its data, configs and seed."""

from __future__ import annotations

import torch

# `Predictor.metadata` key: the `numeric_environment` its weights were last trained in
TRAINED_WITH = "trained_with"


def numeric_environment() -> dict[str, str]:
    """The torch build, its intra-op thread count and the CPU instruction set it picks kernels
    for. The same seed, data and configs reproduce the weights bit for bit only where these match
    too: a matmul split over two threads sums in another order than over one, and the weights
    of a one-thread and a two-thread pretraining differ after 200 steps (README, "Accuracy")."""
    return {
        "torch_version": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
