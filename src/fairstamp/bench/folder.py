"""Where a bench run keeps what: the layout of its resumable run folder (module docstring of
`fairstamp.bench.runner`)."""

from __future__ import annotations

from pathlib import Path

ORIGINAL = "original"
CONFIG_NAME = "bench_config.json"


def method_folder(out: Path, name: str) -> Path:
    return out / ORIGINAL if name == ORIGINAL else out / "methods" / name


def is_done(out: Path, name: str) -> bool:
    return (method_folder(out, name) / "metrics.json").is_file()
