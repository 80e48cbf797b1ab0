"""Reproducibility: explicit seeding and the library versions recorded in every run folder."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Called by commands with their `--seed`, never at import."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_VERSIONED = ["fairstamp", "torch", "transformers", "tokenizers", "safetensors", "numpy", "gguf"]


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that determine fairstamp's numbers."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
