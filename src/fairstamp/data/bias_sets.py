"""One way to name a set of bias items on the command line: `stereoset`, `crows` or a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fairstamp.data.bias_file import load_bias_file
from fairstamp.data.crows import load_crows_pairs
from fairstamp.data.items import BiasItem
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.validate import select


def load_bias_set(data: str, bias_types: Sequence[str] | None = None,
                  limit: int | None = None) -> list[BiasItem]:
    """`stereoset` (StereoSet dev, built in) or a StereoSet `.json`; `crows` or a CrowS-Pairs
    `.csv`; otherwise a SPEC §2 bias JSONL file. Filtered to `bias_types`, first `limit` items."""

    types = list(bias_types) if bias_types else None
    if data == "stereoset" or data.endswith(".json"):
        return load_stereoset(None if data == "stereoset" else data, bias_types=types,
                              limit=limit)
    if data == "crows" or data.endswith(".csv"):
        return load_crows_pairs(None if data == "crows" else data, bias_types=types, limit=limit)
    return select(load_bias_file(Path(data)), data,
                  bias_types=frozenset(types) if types else None, limit=limit)
