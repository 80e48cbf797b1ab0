"""The one way a run folder is written (eval, debias, trace, bench): everything goes into a
staging folder that is renamed into place only when the whole run succeeded, so a folder is
either complete or absent, and an existing one is refused unless `overwrite`.

    with run_folder(out, overwrite=overwrite) as folder:
        folder.json("metrics.json", metrics)
        folder.evaluation("before", evaluation.metrics, evaluation.predictions)
        folder.report(metrics, render=markdown_report, plots=make_plots)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairstamp.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, staging_dir

log = logging.getLogger(__name__)

METRICS = "metrics.json"
PREDICTIONS = "predictions.json"
REPORT = "report.md"
PLOTS = "plots"

#: plots(metrics, folder) -> {caption: path relative to the run folder}
PlotMaker = Callable[[dict[str, Any], Path], dict[str, str]]
#: render(metrics, plots) -> Markdown
ReportRenderer = Callable[[dict[str, Any], dict[str, str]], str]


@dataclass
class RunFolder:
    """A run folder being written; `path` is the staging folder (final name at the end)."""

    path: Path
    final: Path
    written: list[str] = field(default_factory=list)

    def json(self, name: str | Path, obj: Any) -> Path:
        return self._note(name, lambda p: atomic_write_json(p, obj))

    def text(self, name: str | Path, text: str) -> Path:
        return self._note(name, lambda p: atomic_write_text(p, text))

    def bytes(self, name: str | Path, data: bytes) -> Path:
        return self._note(name, lambda p: atomic_write_bytes(p, data))

    def evaluation(self, name: str | Path, metrics: dict[str, Any],
                   predictions: dict[str, Any]) -> None:
        """An evaluation's metrics.json + predictions.json, in `name/` ('' for the top)."""
        self.json(Path(name) / METRICS, metrics)
        self.json(Path(name) / PREDICTIONS, predictions)

    def report(self, metrics: dict[str, Any], render: ReportRenderer,
               plots: PlotMaker | None = None) -> dict[str, str]:
        """plots/ (when a plot maker is given) and report.md, which links them."""
        made = plots(metrics, self.path / PLOTS) if plots is not None else {}
        self.text(REPORT, render(metrics, made))
        return made

    def _note(self, name: str | Path, write: Callable[[Path], None]) -> Path:
        path = self.path / name
        write(path)
        self.written.append(str(name))
        return path


@contextmanager
def run_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[RunFolder]:
    """Stage a run folder and move it to `out` when the block succeeds (nothing on failure)."""
    out = Path(out)
    with staging_dir(out, overwrite=overwrite) as stage:
        folder = RunFolder(path=stage, final=out)
        yield folder
    log.info("wrote %s (%s)", out, ", ".join(sorted({w.split("/")[0] for w in folder.written})))
