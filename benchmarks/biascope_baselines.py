"""BiaScope baseline numbers of the embedded models: `fairstamp eval --suite all` on each, in its
own process (so time and peak memory are the model's own), then one side-by-side table; and the
transfer suite's (BBQ, WinoBias, BOLD) numbers, from the same run or, for a run folder made before
`all` included the transfer suite, from `fairstamp eval --suite transfer` in its own process.

Usage: python benchmarks/biascope_baselines.py [--models smollm2-135m,gemma-3-270m] [--reuse]
(--reuse: take a model's existing run folders instead of evaluating it again)
Writes benchmarks/results/biascope-<model>/ and transfer-<model>/ (run folders) and
docs/baselines.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fairstamp.reporting.report import general_rows, metric_rows, transfer_rows
from fairstamp.utils.io import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_model(model: str, out: Path, suite: str = "all") -> dict:
    cmd = [sys.executable, "-m", "fairstamp.cli.main", "-q", "eval", "--model", model,
           "--suite", suite, "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True)
    return json.loads((out / "metrics.json").read_text())


def transfer_run(model: str, biascope: dict, reuse: bool) -> dict:
    """The model's transfer-suite run: the `all` run's own, else its `--suite transfer` run."""
    if biascope["metrics"].get("transfer"):
        return biascope
    folder = HERE / "results" / f"transfer-{model}"
    if reuse and (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    return run_model(model, folder, "transfer")


def transfer_table(runs: dict[str, dict]) -> list[str]:
    names = list(runs)
    values = {n: {label: value for label, value, _ in transfer_rows(runs[n]["metrics"])}
              for n in names}
    lines = ["| metric | ideal | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label, _, ideal in transfer_rows(runs[names[0]]["metrics"]):
        lines.append(f"| {label} | {ideal} | "
                     + " | ".join(values[n].get(label, "–") for n in names) + " |")
    return lines


def table(runs: dict[str, dict]) -> list[str]:
    names = list(runs)
    lines = ["| metric | column | ideal | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    first = runs[names[0]]
    for label, ideal, values in metric_rows(first["metrics"]):
        for col in values:
            cells = []
            for name in names:
                rows = {r[0]: r[2] for r in metric_rows(runs[name]["metrics"])}
                cells.append(rows.get(label, {}).get(col, "–"))
            lines.append(f"| {label} | {col} | {ideal} | " + " | ".join(cells) + " |")
    for label, _, ideal in general_rows(first["metrics"]):
        cells = [dict((r[0], r[1]) for r in general_rows(runs[n]["metrics"])).get(label, "–")
                 for n in names]
        lines.append(f"| {label} | overall | {ideal} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--reuse", action="store_true",
                        help="use existing run folders instead of evaluating again")
    args = parser.parse_args()
    runs = {}
    for model in args.models.split(","):
        folder = HERE / "results" / f"biascope-{model}"
        if args.reuse and (folder / "metrics.json").is_file():
            runs[model] = json.loads((folder / "metrics.json").read_text())
        else:
            runs[model] = run_model(model, folder)
    lines = [
        "# BiaScope baselines of the embedded models",
        "",
        "Reproduce: `python benchmarks/biascope_baselines.py` (runs "
        "`fairstamp eval --suite all --model M` for each model). Values are % (perplexity: "
        "exp of nats/token) with bootstrap 95% CIs; sentence score = per-token mean "
        "log-probability; seed 0. Full run folders (metrics.json, report.md, plots) are in "
        "`benchmarks/results/biascope-<model>/`. Definitions: [biascope.md](biascope.md).",
        "",
        *table(runs),
        "",
        "## Cost on this machine (2 CPU cores, no GPU)",
        "",
        "| model | evaluation (s) | peak memory (MiB) | sentences scored |",
        "|---|---:|---:|---:|",
    ]
    for name, m in runs.items():
        lines.append(f"| `{name}` | {m['timing']['seconds']:.0f} | "
                     f"{m['timing']['peak_rss_mib']:.0f} | {m['scoring']['sentences_scored']} |")
    lines.append("")
    general = {n: m["config"]["general_limits"] for n, m in runs.items()}
    lines.append("General-ability subsets (first N in file order): see "
                 "`fairstamp/metrics/general.py` `DEFAULT_LIMITS`" +
                 ("" if not any(general.values()) else f"; overrides {general}") + ".")
    lines.append("")
    transfer = {n: transfer_run(n, m, args.reuse) for n, m in runs.items()}
    limits = {n: m["config"].get("transfer_limits") or {} for n, m in transfer.items()}
    lines += [
        "## Transfer suite: BBQ, WinoBias, BOLD generations",
        "",
        "Bias on benchmarks no edit saw and in generated text, with the default subsets "
        "(definitions, subsets and licences: [biascope.md](biascope.md#transfer-suite); "
        "points or %, bootstrap 95% CIs). Run folders: `benchmarks/results/transfer-<model>/` "
        "(`fairstamp eval --suite transfer --model M`) where the `all` run above predates the "
        "suite.",
        "",
        *transfer_table(transfer),
        "",
        "| model | transfer suite (s) | peak memory (MiB) |",
        "|---|---:|---:|",
        *(f"| `{n}` | {m['timing']['seconds']:.0f} | {m['timing']['peak_rss_mib']:.0f} |"
          for n, m in transfer.items()),
        "",
        "Transfer subsets: " + ", ".join(f"`{n}` {v or 'defaults'}" for n, v in limits.items())
        + " (`fairstamp/evaluation/config.py` `TRANSFER_LIMITS`). Time is the evaluation "
        "alone (model loading, and gemma-3-270m's one-time GGUF conversion, not included), "
        "each model in its own process on the otherwise idle machine. Both models almost never "
        "answer \"unknown\" in BBQ's ambiguous contexts (the first row); gemma-3-270m's "
        "WinoBias gap (pro − anti) is four times smollm2-135m's.",
        "",
    ]
    atomic_write_text(ROOT / "docs" / "baselines.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
