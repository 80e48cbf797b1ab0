"""Plain torch hooks as context managers that always clean up (after ROME's `nethook`).

Every hook fairstamp places on a model for the length of a computation goes through `hooks(...)`
(hooks that change what a module computes) or `Capture` (hooks that record what modules read and
return, and may stop the forward pass there): leaving the `with` block, by return or by exception,
removes them all, so a failed trace or training step never leaves a model silently modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from fairstamp.utils.modules import get_module

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


class Capture:
    """Record what modules read and return during a forward pass (ROME's `TraceDict`).

        with Capture(model, inputs=[arch.layer_path(3)], stop=True) as seen:
            model(input_ids=ids)
        hidden = seen.inputs[arch.layer_path(3)]  # what layer 3 read; layers 3.. did not run

    inputs:  paths of the modules whose input hidden states (`hidden_arg`) to record, read by a
             forward pre-hook, before the module runs; in `.inputs[path]`.
    outputs: paths of the modules whose output hidden states (`first_tensor`) to record; in
             `.outputs[path]`.
    stop:    end the forward pass as soon as every requested value is recorded (a `StopForward`,
             which leaving the block swallows), so the modules after the last one do not run.
    clone:   record copies; otherwise the recorded tensors are the model's own (detached).

    Recorded tensors are detached. A module that runs more than once in the block keeps its last
    value. The hooks are removed when the block is left, however it is left.
    """

    def __init__(self, model: nn.Module, *, inputs: Sequence[str] = (),
                 outputs: Sequence[str] = (), stop: bool = False, clone: bool = False) -> None:
        self.model = model
        self.input_paths = list(dict.fromkeys(inputs))
        self.output_paths = list(dict.fromkeys(outputs))
        self.stop, self.clone = stop, clone
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._stack = ExitStack()

    def __enter__(self) -> Capture:
        self.inputs.clear()
        self.outputs.clear()

        def read_input(path: str) -> PreHook:
            return lambda module, args, kwargs: self._record(self.inputs, path,
                                                             hidden_arg(args, kwargs))

        def read_output(path: str) -> ForwardHook:
            return lambda module, args, output: self._record(self.outputs, path,
                                                             first_tensor(output))

        self._stack.enter_context(hooks(
            self.model, forward=[(p, read_output(p)) for p in self.output_paths],
            pre=[(p, read_input(p)) for p in self.input_paths]))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: Any, traceback: Any) -> bool:
        self._stack.close()
        return self.stop and kind is not None and issubclass(kind, StopForward)

    def _record(self, store: dict[str, torch.Tensor], path: str, value: torch.Tensor) -> None:
        value = value.detach()
        store[path] = value.clone() if self.clone else value
        if (self.stop and len(self.inputs) == len(self.input_paths)
                and len(self.outputs) == len(self.output_paths)):
            raise StopForward


def first_tensor(output: Any) -> Any:
    """The hidden states in a module's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_first(output: Any, value: Any) -> Any:
    """`output` with its hidden states replaced by `value`, keeping the output's structure."""
    return (value, *output[1:]) if isinstance(output, tuple) else value


#: The keyword a module's hidden states arrive under when not passed positionally: decoder layers
#: call theirs `hidden_states`, nn.Linear `input`.
_HIDDEN_KEYWORDS = ("hidden_states", "input")


def _hidden_keyword(kwargs: dict) -> str:
    return next((k for k in _HIDDEN_KEYWORDS if k in kwargs), _HIDDEN_KEYWORDS[0])


def replace_hidden_arg(args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
    """A module's call arguments with its hidden states (the first positional argument, else the
    `hidden_states` or `input` keyword) replaced by `value`."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, _hidden_keyword(kwargs): value}


def hidden_arg(args: tuple, kwargs: dict) -> Any:
    """The hidden states a module was called with: its first positional argument, else its
    `hidden_states` (decoder layers) or `input` (nn.Linear) keyword."""
    return args[0] if args else kwargs[_hidden_keyword(kwargs)]


class StopForward(Exception):
    """Raised by a hook that has read what it needed, to end the forward pass early; `Capture`
    raises and swallows it (`stop=True`), and every hook is still removed."""
