"""Writing an evaluation's run folder through the one run-folder writer
(`fairstamp.reporting.run_folder`): all of it or nothing.

Layout: metrics.json (every number + configuration, seed, versions, data checksums),
predictions.json (per-item preferences for RS/known_1000 "kept" in later runs), report.md, plots/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairstamp.errors import DataError
from fairstamp.reporting import plots as P
from fairstamp.reporting.report import flat, markdown_report
from fairstamp.reporting.run_folder import METRICS, PLOTS, run_folder

if TYPE_CHECKING:  # the Scorer (torch) behind `suite`; writing a folder needs neither
    from fairstamp.evaluation.suite import Evaluation


def make_plots(metrics: dict[str, Any], folder: Path) -> dict[str, str]:
    """The run's plots, as {name: relative path}; only those whose numbers exist."""
    name = metrics["model"]["name"]
    results = metrics["metrics"]
    plots: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    stereoset = results.get("stereoset")
    if stereoset:
        P.bars_with_ideal({"SS": flat(stereoset["ss"])},
                          folder / "ss_by_bias_type.png",
                          title=f"Stereotype score by bias type — {name}", ylabel="SS (%)")
        plots["SS per bias type"] = f"{PLOTS}/ss_by_bias_type.png"
    if results.get("per_target"):
        P.per_target_scatter(results["per_target"], folder / "per_target_ss.png",
                             title=f"SS per StereoSet target — {name}")
        plots["SS per target"] = f"{PLOTS}/per_target_ss.png"
    if stereoset and "lms" in stereoset:
        ss_macro, lms = flat(stereoset["ss_macro"]), flat(stereoset["lms"])
        points = {key: {"ss": ss_macro[key], "lms": lms[key]} for key in ss_macro}
        P.lms_vs_ss(points, folder / "lms_vs_ss.png", title=f"LMS vs SS (official) — {name}")
        plots["LMS vs SS"] = f"{PLOTS}/lms_vs_ss.png"
    if P.transfer_overview(results, folder / "transfer.png", title=f"Transfer suite — {name}"):
        plots["Transfer suite"] = f"{PLOTS}/transfer.png"
    return plots


def write_run(evaluation: Evaluation, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run folder atomically; an existing folder is refused unless `overwrite`."""
    out = Path(out)
    with run_folder(out, overwrite=overwrite) as folder:
        folder.evaluation("", evaluation.metrics, evaluation.predictions)
        folder.report(evaluation.metrics, render=markdown_report, plots=make_plots)
    return out


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """metrics.json of a run folder (a DataError if it has none)."""
    path = Path(folder) / METRICS
    if not path.is_file():
        raise DataError(f"{folder}: not a fairstamp run folder (no metrics.json)")
    return json.loads(path.read_text())
