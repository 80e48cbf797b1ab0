"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.models.aliases import DEFAULT_MODEL

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Alias (smollm2-135m, gemma-3-270m), local folder or "
                 "Hugging Face id of a causal LM."),
]
DEFAULT = DEFAULT_MODEL

CacheDirOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional on 3.10
    typer.Option("--cache-dir", help="Where converted models are cached "
                 "(default: $FAIRSTAMP_CACHE or ~/.cache/fairstamp)."),
]
DeviceOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)."),
]
BatchTokensOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--batch-tokens", min=16,
                 help="Padded tokens per forward pass (default: what fits 512 MiB of logits)."),
]


def split_list(value: str | None) -> list[str] | None:
    """`"gender, race"` → ["gender", "race"]; None or empty → None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
