"""FAST as a method of the common interface: one fairness stamp at the context's layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.methods.base import Edit, EditContext, Method


class StampEdit(Edit):
    """A trained stamp attached to the model; `restore` detaches it (bitwise the original)."""

    method = "fast"

    def __init__(self, fit: Any) -> None:
        self.fit = fit
        self.stamp = fit.stamp
        self.info = {"layer": self.stamp.layer, "width": self.stamp.config.width,
                     "reads": self.stamp.config.reads, **fit.summary()}

    def restore(self, loaded: Any) -> None:
        self.stamp.detach_from(loaded)

    def parameters_changed(self) -> int:
        return self.stamp.num_parameters()

    def save(self, folder: str | Path) -> Path:
        """The stamp's own artefact (stamp_config.json + stamp.safetensors) and edit.json."""
        from fairstamp.stamp.artefact import write_stamp_files

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_stamp_files(folder, self.stamp)
        return super().save(folder)


class FastMethod(Method):
    name = "fast"
    config_class = FitConfig
    description = "a fairness stamp (small MLP) added after one layer's MLP; base weights frozen"

    def fit(self, context: EditContext) -> Edit:
        result = fit_stamp(context.loaded, context.items, context.layer,
                           retention_sentences=context.retention_sentences,
                           generic_sentences=context.generic_sentences,
                           generic_passages=context.generic_passages,
                           config=_seeded(self.config, context.seed), progress=context.progress)
        return StampEdit(result)


def _seeded(config: FitConfig, seed: int) -> FitConfig:
    from dataclasses import replace

    return replace(config, seed=seed)
