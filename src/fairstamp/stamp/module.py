"""The fairness stamp as a module inserted into someone else's model (after peft's layer wrappers).

A `FairnessStamp` is f(h) = W2 · act(W1 · h + b1) + b2 with W2 and b2 zero-initialised, so a fresh
stamp changes nothing. `StampedMLP` wraps one decoder layer's MLP module (`base_layer`), runs it,
and adds each enabled stamp's output to the MLP's output at every position; several stamps stack
in order (sequential editing: h ← h + f_1(h), then h ← h + f_2(h), ...). With no enabled stamp the
wrapper returns the base output object itself, so the model is bitwise unchanged.

What a stamp reads [ours]: `reads="mlp_output"` (SPEC §4: the MLP's output, which the stamp then
corrects) or `"mlp_input"` (the normalised residual stream the MLP reads); docs/fast.md has the
measurement behind the default. Where a norm follows the MLP (Gemma 3, `ArchSpec.mlp_normed`) the
wrapped module is that norm, the MLP's output is the normalised one, and `"mlp_input"` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fairstamp.errors import FairstampError
from fairstamp.models.archspec import ArchSpec, check_layer, get_module, set_module
from fairstamp.utils.devices import execution_device
from fairstamp.utils.hooks import first_tensor, hidden_arg, replace_first

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
READS = ("mlp_output", "mlp_input")


class FairnessStamp(nn.Module):
    """f(h) = W2 · act(W1 · h + b1) + b2; `hidden` → `width` → `hidden`, W2 and b2 start at zero."""

    def __init__(self, hidden: int, width: int, *, activation: str = "gelu",
                 reads: str = "mlp_output", generator: torch.Generator | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FairstampError(f"unknown activation {activation!r}; choose from "
                                 f"{', '.join(ACTIVATIONS)}")
        if reads not in READS:
            raise FairstampError(f"unknown stamp input {reads!r}; choose from {', '.join(READS)}")
        for name, value in (("hidden", hidden), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FairstampError(f"stamp {name} must be a positive integer, got {value!r}")
        self.hidden, self.width, self.activation, self.reads = hidden, width, activation, reads
        self.up = nn.Linear(hidden, width, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(width, hidden, device=device, dtype=dtype)
        with torch.no_grad():
            # Kaiming-uniform as nn.Linear, but drawn from an explicit generator (reproducible).
            bound = 1.0 / hidden**0.5
            self.up.weight.copy_(torch.empty(width, hidden).uniform_(-bound, bound,
                                                                     generator=generator))
            self.up.bias.copy_(torch.empty(width).uniform_(-bound, bound, generator=generator))
            self.down.weight.zero_()
            self.down.bias.zero_()
        self.enabled = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(h)))

    @property
    def device(self) -> torch.device:
        return self.up.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.up.weight.dtype

    def extra_repr(self) -> str:
        return f"reads={self.reads}, enabled={self.enabled}"


class StampedMLP(nn.Module):
    """An MLP module plus the stamps added to its output (peft-style: `base_layer` is the original
    module, untouched)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.stamps = nn.ModuleList()

    def forward(self, *args, **kwargs):
        output = self.base_layer(*args, **kwargs)
        active = [s for s in self.stamps if s.enabled]
        if not active:
            return output
        h = first_tensor(output)
        mlp_input = hidden_arg(args, kwargs) if any(s.reads == "mlp_input" for s in active) \
            else None
        for stamp in active:
            # The stamp computes in its own precision (float32) on its own device, whatever the
            # host model's; its output joins the host's stream in the host's dtype.
            source = h if stamp.reads == "mlp_output" else mlp_input
            h = h + stamp(source.to(stamp.device, stamp.dtype)).to(h.device, h.dtype)
        return replace_first(output, h)


def check_reads(arch: ArchSpec, reads: str) -> None:
    """Refuse a stamp input this architecture does not offer."""
    if reads == "mlp_input" and arch.mlp_normed:
        raise FairstampError(f"a stamp reading the MLP's input is not supported on {arch.family}: "
                             f"the stamp sits after the norm that follows its MLP; use "
                             f"reads='mlp_output'")


def attach(model: nn.Module, arch: ArchSpec, layer: int, stamp: FairnessStamp) -> StampedMLP:
    """Add `stamp` after layer `layer`'s MLP (wrapping the MLP on first use); the stamp moves to
    the device the MLP computes on (its execution device when the model is dispatched with a
    device map, where an offloaded MLP's own weights are `meta`) and keeps its dtype. Returns
    the wrapper."""
    check_layer(layer, arch.num_layers(model))
    check_reads(arch, stamp.reads)
    path = arch.mlp_path(layer)
    module = get_module(model, path)
    if not isinstance(module, StampedMLP):
        module = StampedMLP(module)
        set_module(model, path, module)
    stamp.to(device=execution_device(module.base_layer))
    module.stamps.append(stamp)
    return module


def detach(model: nn.Module, arch: ArchSpec, stamp: FairnessStamp | None = None) -> int:
    """Remove `stamp` (or every stamp when None); an MLP left without stamps gets its original
    module back. Returns how many stamps were removed."""
    removed = 0
    for layer in range(arch.num_layers(model)):
        path = arch.mlp_path(layer)
        module = get_module(model, path)
        if not isinstance(module, StampedMLP):
            continue
        keep = [s for s in module.stamps if stamp is not None and s is not stamp]
        removed += len(module.stamps) - len(keep)
        module.stamps = nn.ModuleList(keep)
        if not keep:
            set_module(model, path, module.base_layer)
    return removed


def stamps_of(model: nn.Module, arch: ArchSpec) -> list[tuple[int, FairnessStamp]]:
    """Every attached stamp as (layer, stamp), in layer order then stacking order."""
    out = []
    for layer in range(arch.num_layers(model)):
        module = get_module(model, arch.mlp_path(layer))
        if isinstance(module, StampedMLP):
            out.extend((layer, s) for s in module.stamps)
    return out


@contextmanager
def disabled(model: nn.Module, arch: ArchSpec,
             stamps: list[FairnessStamp] | None = None) -> Iterator[None]:
    """Run the model as if the given stamps (default: all) were not there; restored on exit."""
    chosen = stamps if stamps is not None else [s for _, s in stamps_of(model, arch)]
    before = [s.enabled for s in chosen]
    try:
        for s in chosen:
            s.enabled = False
        yield
    finally:
        for s, was in zip(chosen, before):
            s.enabled = was
