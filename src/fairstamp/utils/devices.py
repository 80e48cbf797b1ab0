"""Where a module of a (possibly dispatched) model computes, and reading its weights wherever they
live.

A model loaded with a device map (`fairstamp.models.load(..., device_map=...)`) is spread by
accelerate: each module computes on its *execution device* (its `_hf_hook.execution_device`), and
the weights of offloaded modules (CPU or disk offload) are `meta` tensors between forward passes,
loaded on the fly by accelerate's `AlignDevicesHook`. So `next(model.parameters()).device` says
nothing about where a given module runs: code that creates tensors for a module asks
`execution_device(module)`, code that feeds token ids asks `input_device(model)`, and code that
combines a tensor with a module's output moves it to that output's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn


def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device of an accelerate hook on `module` itself (a hook may be a
    `SequentialHook` of several)."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", ())]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: the execution device of accelerate's hook on it or on its first
    hooked submodule; else the device of its first parameter or buffer that is not `meta`; else
    the CPU (a module without weights)."""
    for sub in module.modules():
        device = _hook_device(sub)
        if device is not None:
            return device
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where a model reads its token ids: the execution device of its input embeddings (the first
    module a forward pass runs), or of the model itself when it has none."""
    embeddings = None
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            embeddings = get()
        except (AttributeError, NotImplementedError):
            embeddings = None
    return execution_device(embeddings if isinstance(embeddings, nn.Module) else model)


def is_offloaded(module: nn.Module) -> bool:
    """Whether any weight of `module` is offloaded (a `meta` tensor that accelerate loads for each
    forward pass)."""
    return any(t.device.type == "meta" for t in (*module.parameters(), *module.buffers()))


@contextmanager
def resident(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the weights of `module` and its submodules are real tensors on their
    execution device, offloaded ones included (accelerate's `align_module_device`, one module
    at a time); offloaded ones go back to `meta` on exit. A model that is not dispatched is
    left as it is."""
    if not is_offloaded(module):
        yield module
        return
    from accelerate.utils import align_module_device

    with ExitStack() as stack:
        for sub in module.modules():
            stack.enter_context(align_module_device(sub))
        yield module
