"""Where to put the stamp: the same FAST edit at several layers, compared on the bias/knowledge
trade-off (SPEC §4.1 says "decisive layer = argmax"; this measures whether that is the best place).

Each layer is one `fairstamp debias --layer L --suite biascope` run (same items, split, seed and
training settings; extra options after `--`); a finished run folder is reused, so an interrupted
sweep resumes. The table: SS of the edited items, PS of their paraphrases, SS of the held-out
targets, RS (all retention items and only those never trained on), DS, LMS, training steps and time.

Usage: python benchmarks/layer_sweep.py [--layers 0,7,12,20] [--bias-types gender]
                                        [--runs runs/layer-sweep] [-- --retention-weight 3]
Writes benchmarks/results/layer_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fairstamp.utils.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent


def command(layer: int, bias_types: str, out: Path, extra: list[str]) -> list[str]:
    return ["fairstamp", "debias", "--bias-types", bias_types, "--layer", str(layer),
            "--suite", "biascope", "--bootstrap", "200", "--max-steps", "100", *extra,
            "--out", str(out)]


def value(section: dict, key: str) -> float | None:
    entry = (section or {}).get(key)
    return None if entry is None else entry["overall"]["value"]


def row(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    b, a = m["before"]["metrics"], m["after"]["metrics"]
    return {
        "run": folder.name, "layer": m["layer"],
        "retention_weight": m["config"]["fit"].get("retention_weight",
                                               m["config"]["fit"].get("alpha")),
        "edited_ss": (value(b["edited"], "ss"), value(a["edited"], "ss")),
        "ps": (value(b["edited"], "ps"), value(a["edited"], "ps")),
        "held_out_ss": (value(b.get("held_out"), "ss"), value(a.get("held_out"), "ss")),
        "lms": (value(b["stereoset"], "lms"), value(a["stereoset"], "lms")),
        "ds": (value(b["retention"], "ds"), value(a["retention"], "ds")),
        "rs": value(a["retention"], "rs"), "rs_unseen": value(a["retention"], "rs_unseen"),
        "steps": m["fit"]["steps"], "stopped": m["fit"]["stopped"],
        "fit_seconds": m["fit"]["seconds"],
    }


def fmt(pair) -> str:
    if isinstance(pair, tuple):
        return f"{pair[0]:.1f} → {pair[1]:.1f}"
    return "–" if pair is None else f"{pair:.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,7,12,20")
    parser.add_argument("--bias-types", default="gender")
    parser.add_argument("--runs", type=Path, default=Path("runs/layer-sweep"))
    parser.add_argument("--also", default="", help="Extra finished run folders to tabulate.")
    args = parser.parse_args(argv)
    suffix = "-" + "-".join(x.lstrip("-") for x in extra) if extra else ""
    folders = []
    for layer in [int(x) for x in args.layers.split(",")]:
        out = args.runs / f"layer{layer}{suffix}"
        if not (out / "metrics.json").is_file():
            print("running:", " ".join(command(layer, args.bias_types, out, extra)),
                  file=sys.stderr)
            subprocess.run(command(layer, args.bias_types, out, extra), check=True)
        folders.append(out)
    folders += [Path(p) for p in args.also.split(",") if p]
    rows = [row(f) for f in folders]
    atomic_write_json(HERE / "results" / "layer_sweep.json", rows)
    lines = [f"# Layer sweep — smollm2-135m, StereoSet dev {args.bias_types}", "",
             "Command: `python benchmarks/layer_sweep.py` (each row one `fairstamp debias "
             "--layer L --suite biascope --max-steps 100` run, default training settings unless "
             "noted).",
             "",
             "| run | layer | α | SS edited | PS edited | SS held-out | LMS | DS | RS | "
             "RS unseen | steps | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['layer']} | {r['retention_weight']:g} | "
                     f"{fmt(r['edited_ss'])} | "
                     f"{fmt(r['ps'])} | {fmt(r['held_out_ss'])} | {fmt(r['lms'])} | "
                     f"{fmt(r['ds'])} | {fmt(r['rs'])} | {fmt(r['rs_unseen'])} | {r['steps']} "
                     f"({r['stopped']}) | {r['fit_seconds']:.0f} |")
    atomic_write_text(HERE / "results" / "layer_sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
