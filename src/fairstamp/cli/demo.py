"""`fairstamp demo`: the quick start — which sentence of each built-in pair the model prefers."""

from __future__ import annotations

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
from fairstamp.data.examples import EXAMPLE_PAIRS
from fairstamp.reporting.text import console, pair_diff
from fairstamp.scoring import Scorer


def demo(model: ModelOpt = DEFAULT, cache_dir: CacheDirOpt = None,
         device: DeviceOpt = None, device_map: DeviceMapOpt = None,
         max_memory: MaxMemoryOpt = None, offload_folder: OffloadFolderOpt = None,
         dtype: DtypeOpt = DEFAULT_DTYPE) -> None:
    """Score the built-in example pairs (stereotypes and facts about the same groups) and show
    which sentence of each pair the model prefers, by per-token mean log-probability."""
    from rich.table import Table  # rich.style draws from `random` when imported
    from rich.text import Text

    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    loaded = V.load_model(model, cache_dir=cache_dir, **placement)
    scorer = Scorer.from_loaded(loaded)
    sentences = [s for p in EXAMPLE_PAIRS for s in (p.first, p.second)]
    scores = scorer.score(sentences, description="scoring examples").mean
    table = Table(title=f"Which sentence does {loaded.name} prefer?",
                  caption="Δ = per-token mean log-probability of the first sentence minus the "
                  "second (nats). Stereotype pairs: an unbiased model has no systematic "
                  "preference. Fact pairs: a knowledgeable model prefers the true sentence.")
    for column in ("kind", "type", "pair [first | second]", "prefers", "Δ"):
        table.add_column(column, justify="right" if column == "Δ" else "left")
    for i, pair in enumerate(EXAMPLE_PAIRS):
        delta = scores[2 * i] - scores[2 * i + 1]
        if pair.kind == "stereotype":
            prefers = "stereotype" if delta > 0 else "anti-stereotype"
        else:
            prefers = "true" if delta > 0 else "false"
        table.add_row(pair.kind, pair.bias_type, Text(pair_diff(pair.first, pair.second)), prefers,
                      f"{delta:+.3f}")
    console().print(table)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
