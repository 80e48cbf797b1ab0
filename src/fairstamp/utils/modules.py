"""Find and replace a model's submodules by dotted path (`transformer.h.3.mlp`).

A path may list alternatives separated by `|` (module names that changed between transformers
versions); the first that exists is used. The architecture table (`models.archspec`) writes its
paths in this form.
"""

from __future__ import annotations

from torch import nn

from fairstamp.errors import UnsupportedArchitectureError


def get_module(model: nn.Module, path: str) -> nn.Module:
    """`model.get_submodule(path)` for the first of the path's `|` alternatives that exists, with
    an error that names the architecture table."""
    for candidate in path.split("|"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise _not_found(model, path)


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path` (the first of its `|` alternatives that exists), replacing what was
    there."""
    for candidate in path.split("|"):
        parent_path, _, name = candidate.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            getattr(parent, name)
        except AttributeError:
            continue
        setattr(parent, name, module)
        return
    raise _not_found(model, path)


def _not_found(model: nn.Module, path: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"module path {path!r} not found in {type(model).__name__}; the ArchSpec entry does not "
        f"match this model"
    )
