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
    """Versions of Python and the libraries that determine fairstamp's numbers, and the machine
    they ran on (`machine`)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    out["machine"] = machine()
    return out


def machine() -> str:
    """The CPU, the vector instructions torch's kernels use on it and torch's thread count:
    floating-point sums run in another order on another of these, so a training run with the
    same seed, inputs and versions can follow another trajectory there (docs/fast.md,
    "Seeds")."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            name = next((line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name")), name)
    except OSError:
        pass
    return (f"{name}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads")
