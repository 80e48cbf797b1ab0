"""The built-in suite parts; each registers itself on import (`fairstamp.evaluation.registry`).
A new part is a module here, imported below, and its name in a suite of
`fairstamp.evaluation.config.SUITE_PARTS`."""

from fairstamp.evaluation.parts import bias, crows, general, retention, transfer

__all__ = ["bias", "crows", "general", "retention", "transfer"]
