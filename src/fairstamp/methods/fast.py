"""FAST as a method of the common interface: one fairness stamp at the context's layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.methods.base import Edit, EditContext, Method
from fairstamp.stamp.artefact import Stamp, write_stamp_files


class StampEdit(Edit):
    """A trained stamp attached to the model; `restore` detaches it (bitwise the original)."""

    method = "fast"
    loader = "fairstamp.methods.fast:StampEdit"

    def __init__(self, stamp: Stamp, summary: dict[str, Any] | None = None) -> None:
        self.stamp = stamp
        self.info = {"layer": stamp.layer, "width": stamp.config.width,
                     "reads": stamp.config.reads, **(summary or {})}

    @classmethod
    def from_saved(cls, folder: Path, loaded: Any, summary: dict[str, Any],
                   tensors: dict[str, Any]) -> StampEdit:
        """The stamp artefact in `folder`, fingerprint-checked and attached."""
        stamp = Stamp.from_pretrained(folder, loaded)
        return cls(stamp, {k: v for k, v in summary.items()
                           if k not in ("method", "parameters_changed", "loader", "layer",
                                        "width", "reads")})

    def restore(self, loaded: Any) -> None:
        self.stamp.detach_from(loaded)

    def parameters_changed(self) -> int:
        return self.stamp.num_parameters()

    def save(self, folder: str | Path) -> Path:
        """The stamp's own artefact (stamp_config.json + stamp.safetensors) and edit.json."""
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
                           group_swap=context.group_swap, monitor=context.monitor_items,
                           config=self.seeded_config(context.seed),
                           progress=context.progress)
        return StampEdit(result.stamp, result.summary())
