"""Debiasing methods behind one interface (`base.Method` → `base.Edit`), found by name.

Built-in methods are imported only when asked for (no import-time cost); `register` adds your own:

    from fairstamp.methods import register, get_method
    @register
    class MyMethod(Method): name = "mine"; config_class = MyConfig; def fit(self, context): ...
    get_method("mine", lr=0.1).fit(context)
"""

from __future__ import annotations

import importlib
from typing import Any

from fairstamp.errors import FairstampError
from fairstamp.methods.base import (
    Edit,
    EditContext,
    HookEdit,
    Method,
    WeightEdit,
    WrapperEdit,
    snapshot,
)

#: name → "module:Class" of the built-in methods, in the order tables list them.
BUILTIN = {
    "fast": "fairstamp.methods.fast:FastMethod",
    "ft": "fairstamp.methods.finetune:FineTuneMethod",
    "rome": "fairstamp.methods.rome:RomeMethod",
    "memit": "fairstamp.methods.memit:MemitMethod",
    "cda": "fairstamp.methods.cda:CdaMethod",
    "inlp": "fairstamp.methods.projection:InlpMethod",
    "sentence_debias": "fairstamp.methods.projection:SentenceDebiasMethod",
    "self_debias": "fairstamp.methods.self_debias:SelfDebiasMethod",
}
_REGISTERED: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its `name`."""
    if not getattr(cls, "name", None):
        raise FairstampError(f"{cls.__name__} has no `name`")
    _REGISTERED[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return [*BUILTIN, *(n for n in _REGISTERED if n not in BUILTIN)]


def method_class(name: str) -> type[Method]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise FairstampError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    module, cls = BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, config: Any = None, **overrides: Any) -> Method:
    """A method by name, with its default config, a given config, or defaults plus overrides."""
    return method_class(name)(config, **overrides)


__all__ = ["BUILTIN", "Edit", "EditContext", "HookEdit", "Method", "WeightEdit",
           "WrapperEdit", "get_method", "method_class", "method_names", "register", "snapshot"]
