"""Time to train a fairness stamp on every StereoSet dev gender item (edit side of the split), and
the speed-up from reusing the frozen layers below the stamp.

Measured side by side in one run, on the same model, items, stamp and seed:
  cached  fairstamp's training: the hidden states entering the stamp's layer are computed once per
          training sentence and every step runs only the layers from the stamp up
  full    the same training with the full forward pass recomputed every step (`reuse_lower=False`)
Both run the same number of steps (early stopping off) and their stamps are compared. Then the
cached way trains to convergence with the default settings (early stopping on): the edit time a
user sees.

Usage: python benchmarks/stamp_training.py [--model smollm2-135m] [--layers 7,15] [--steps 20]
Writes benchmarks/results/stamp_training.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from fairstamp.data.splits import split_by_target
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.training_text import training_text
from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.models import load
from fairstamp.stamp import detach
from fairstamp.utils.io import atomic_write_json, atomic_write_text
from fairstamp.utils.repro import library_versions

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def run(loaded, items, layer, text, config):
    start = time.perf_counter()
    result = fit_stamp(loaded, items, layer, text=text, config=config, progress=False)
    total = time.perf_counter() - start
    state = result.stamp.state_dict()
    detach(loaded.model, loaded.arch)
    return result, total, state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="7,15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bias-type", default="gender")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    loaded = load(args.model)
    items, _ = split_by_target(load_stereoset(bias_types=[args.bias_type]))
    text = training_text([args.bias_type], data_dir=DATA)  # debias's: sentences and passages
    rows = []
    for layer in [int(x) for x in args.layers.split(",")]:
        fixed = dict(max_steps=args.steps, min_steps=args.steps + 1)
        cached, t_cached, s_cached = run(loaded, items, layer, text,
                                         FitConfig(reuse_lower=True, **fixed))
        full, t_full, s_full = run(loaded, items, layer, text,
                                   FitConfig(reuse_lower=False, **fixed))
        diff = max(float((s_cached[k] - s_full[k]).abs().max()) for k in s_cached)
        rows.append({
            "layer": layer, "steps": args.steps,
            "cached_step_s": cached.seconds / args.steps, "full_step_s": full.seconds / args.steps,
            "cached_setup_s": cached.setup_seconds, "full_setup_s": full.setup_seconds,
            "cached_total_s": t_cached, "full_total_s": t_full,
            "step_speedup": full.seconds / cached.seconds, "total_speedup": t_full / t_cached,
            "max_abs_weight_difference": diff,
        })
        print(f"layer {layer}: {rows[-1]['cached_step_s']:.2f} s/step cached vs "
              f"{rows[-1]['full_step_s']:.2f} full -> {rows[-1]['step_speedup']:.2f}x per step, "
              f"{rows[-1]['total_speedup']:.2f}x overall; weights differ by {diff:.1e}",
              file=sys.stderr)

    layer = rows[0]["layer"]
    converged, t_conv, _ = run(loaded, items, layer, text, FitConfig())
    results = {
        "model": args.model, "bias_type": args.bias_type, "n_items": len(items),
        "training_text": {"retention_sentences": len(text.retention_sentences),
                          "generic_sentences": len(text.generic_sentences),
                          "generic_passages": len(text.generic_passages)},
        "fixed_steps": rows,
        "to_convergence": {"layer": layer, "seconds": t_conv, "steps": converged.steps,
                           "stopped": converged.stopped, "kept_step": converged.best_step,
                           "setup_seconds": converged.setup_seconds,
                           "final": converged.summary()["final"]},
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
        "versions": library_versions(),
    }
    out = HERE / "results"
    atomic_write_json(out / "stamp_training.json", results)
    lines = [
        f"# Stamp training speed — {args.model}, StereoSet dev {args.bias_type} "
        f"({len(items)} items on the edit side)",
        "",
        f"Command: `python benchmarks/stamp_training.py --layers {args.layers} --steps "
        f"{args.steps}` (one run, side by side, same seed).",
        f"Machine: {torch.get_num_threads()} CPU threads, {platform.platform()}.",
        "",
        "## Reusing the frozen lower layers",
        "",
        f"Both ways train the same stamp (width 256, default settings and training text: "
        f"{len(text.retention_sentences)} retention sentences, "
        f"{len(text.generic_sentences)} generic sentences, {len(text.generic_passages)} "
        f"passages) for {args.steps} steps.",
        "",
        "| layer | s/step cached | s/step full forward | speed-up per step | setup cached / full "
        "(s) | speed-up incl. setup | max weight difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['cached_step_s']:.2f} | {r['full_step_s']:.2f} | "
                     f"{r['step_speedup']:.2f}x | {r['cached_setup_s']:.1f} / "
                     f"{r['full_setup_s']:.1f} | {r['total_speedup']:.2f}x | "
                     f"{r['max_abs_weight_difference']:.1e} |")
    conv = results["to_convergence"]
    lines += ["", "## Time to edit", "",
              f"Default settings, layer {conv['layer']}, early stopping on: "
              f"**{conv['seconds']:.0f} s** including {conv['setup_seconds']:.0f} s of setup "
              f"({conv['steps']} steps, stopped: {conv['stopped']}; step {conv['kept_step']} "
              f"kept, edited items' SS there {conv['final']['ss']:.1f}).", ""]
    atomic_write_text(out / "stamp_training.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
