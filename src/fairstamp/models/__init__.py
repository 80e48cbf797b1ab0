"""Models: loading by alias, folder or hub id, and the per-architecture module table."""

from fairstamp.models.aliases import ALIASES, DEFAULT_MODEL, ModelAlias
from fairstamp.models.archspec import (
    ARCH_SPECS,
    ArchSpec,
    arch_spec_for,
    arch_spec_for_model_type,
    get_module,
    supported_model_types,
)
from fairstamp.models.loader import (
    LoadedModel,
    alias_cache_dir,
    cache_root,
    cached_alias_info,
    convert_alias,
    load,
)

__all__ = [
    "ALIASES",
    "ARCH_SPECS",
    "DEFAULT_MODEL",
    "ArchSpec",
    "LoadedModel",
    "ModelAlias",
    "alias_cache_dir",
    "arch_spec_for",
    "arch_spec_for_model_type",
    "cache_root",
    "cached_alias_info",
    "convert_alias",
    "get_module",
    "load",
    "supported_model_types",
]
