"""Plain torch hooks as context managers that always clean up (after ROME's `nethook`).

Every hook fairstamp places on a model goes through `hooks(...)`: leaving the `with` block, by
return or by exception, removes them all, so a failed trace or training step never leaves a model
silently modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from fairstamp.models.archspec import get_module

ForwardHook = Callable[[nn.Module, tuple, Any], Any]
PreHook = Callable[[nn.Module, tuple, dict], Any]


@contextmanager
def hooks(
    model: nn.Module,
    forward: Sequence[tuple[str, ForwardHook]] = (),
    pre: Sequence[tuple[str, PreHook]] = (),
) -> Iterator[None]:
    """Register forward hooks (`fn(module, args, output) -> new output or None`) and forward
    pre-hooks (`fn(module, args, kwargs) -> (args, kwargs) or None`) on the modules at the given
    paths; all are removed on exit."""
    handles = []
    try:
        for path, fn in forward:
            handles.append(get_module(model, path).register_forward_hook(fn))
        for path, fn in pre:
            handles.append(get_module(model, path).register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_tensor(output: Any) -> Any:
    """The hidden states in a module's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_first(output: Any, value: Any) -> Any:
    """`output` with its hidden states replaced by `value`, keeping the output's structure."""
    return (value, *output[1:]) if isinstance(output, tuple) else value


def replace_hidden_arg(args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
    """A decoder layer's call arguments with `hidden_states` (first positional or keyword)
    replaced by `value`."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def hidden_arg(args: tuple, kwargs: dict) -> Any:
    """The `hidden_states` a decoder layer was called with."""
    return args[0] if args else kwargs["hidden_states"]


class StopForward(Exception):
    """Raised by a hook that has read what it needed, to end the forward pass early; the caller
    catches it (`contextlib.suppress(StopForward)`), and `hooks()` still removes every hook."""
