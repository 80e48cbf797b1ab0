"""`fairstamp generate`: what a stamp does to text — the same prompt, without and with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli import validate as V
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    ModelOpt,
    OffloadFolderOpt,
)
from fairstamp.reporting.text import console
from fairstamp.stamp import Stamp, disabled
from fairstamp.stamp.generation import DEFAULT_BATCH_SIZE, generate_batch


def generate_command(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    model: ModelOpt = DEFAULT,
    stamp: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="A stamp folder (from `fairstamp debias`); without it, the model alone.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 30,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample (with --seed) "
                                         "instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(min=0.01, help="Sampling temperature.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together "
                                            "(left-padded).")] = DEFAULT_BATCH_SIZE,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Continue each prompt with the model, and with the stamp attached when --stamp is given,
    side by side. Greedy by default, so the difference is the stamp's alone. All prompts go
    through the model in batches (the code path the transfer suite's BOLD part uses)."""
    from rich.table import Table  # rich.style draws from `random` when imported

    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    loaded = V.load_model(model, cache_dir=cache_dir, **placement)
    attached = Stamp.from_pretrained(stamp, loaded) if stamp is not None else None
    table = Table(title=f"{loaded.name}" + (f" with the stamp from {stamp}" if stamp else ""),
                  show_lines=True)
    table.add_column("prompt")
    table.add_column("original model")
    if attached is not None:
        table.add_column(f"stamped (layer {attached.layer})")
    options = dict(max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                   seed=seed, batch_size=batch_size)
    with disabled(loaded.model, loaded.arch):
        columns = [generate_batch(loaded, prompts, description="original model", **options)]
    if attached is not None:
        columns.append(generate_batch(loaded, prompts, description="stamped", **options))
    for row in zip(prompts, *columns):
        table.add_row(*row)
    console().print(table)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
