"""The cost curves of fairstamp's work: how evaluation and editing time and memory grow, each figure
a ratio measured side by side in one run of this script (same machine, same data, same seed).

  evaluation  the Scorer on StereoSet dev sentences (every --eval-every-th context): one process
              with two threads (the default), two processes of one thread each (`accelerate
              launch`, gloo; the scores gathered and compared with one process's), one process
              with one thread, and the bare batched forward pass over the same sentences (one row
              per sentence, every logit; benchmarks/scoring.py's lower bound of any scorer that
              runs every sentence in full)
  items       one stamp's edit as the edited items grow: 25, 100, 400 and 1,160 items (a seeded
              sample of, then all, the edit side of StereoSet dev gender + race + religion), and
              "all" (the edit side of StereoSet dev, every bias type, plus every CrowS-Pairs
              pair): the setup (lower-layer cache, KL targets), the time per step, the tokens a
              step trains on, the peak memory, and the edited SS before and after a fixed number
              of steps (--steps; the time to convergence is in docs/fast.md)
  model       the same 100-item edit on each model (--models): time per step per trained token,
              and the peak memory of every phase (load, a BiaScope gender evaluation, a 6-item
              trace, the edit) against the model's own size (parameters x 4 bytes, float32)

Every measurement runs in a process of its own (`--worker`), so that a phase's peak resident
memory (sampled every 5 ms) is its own and not an earlier phase's. Stamps are trained at the
two-thirds layer with FAST's default recipe (FitConfig()), early stopping off.

Usage: python benchmarks/cost_curves.py [--models smollm2-135m,gemma-3-270m] [--sizes
25,100,400,1160,all] [--steps 10] [--eval-every 2]
Writes benchmarks/results/cost_curves.{json,md,png}; each measurement is cached in
benchmarks/results/cost_curves/ (delete a file to measure it again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results"
SIZED_TYPES = ["gender", "race", "religion"]
GIB = 2**30


# -- workers (one process per measurement) --------------------------------------------------------


class PeakMemory:
    """The peak resident memory of this process since the last `reset`, sampled every 5 ms."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def reset(self) -> None:
        self.peak = self.process.memory_info().rss

    def phase(self, name: str, record: dict[str, Any]):
        """A context manager that records the phase's seconds and peak memory in `record`."""
        meter = self

        class _Phase:
            def __enter__(self):
                meter.reset()
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                meter.peak = max(meter.peak, meter.process.memory_info().rss)
                record[name] = {"seconds": round(time.perf_counter() - self.start, 2),
                                "peak_rss_gib": round(meter.peak / GIB, 3)}

        return _Phase()


def sized_items(size: str) -> tuple[list, list[str]]:
    """The edited items of one point of the item curve and their bias types."""
    from fairstamp.data.crows import load_crows_pairs
    from fairstamp.data.splits import split_by_target
    from fairstamp.data.stereoset import load_stereoset

    if size == "all":
        items, _ = split_by_target(load_stereoset())
        items = [*items, *load_crows_pairs()]
    else:
        items, _ = split_by_target(load_stereoset(bias_types=SIZED_TYPES))
        n = int(size)
        if n > len(items):
            raise SystemExit(f"--sizes: {n} items asked, the edit side has {len(items)}")
        if n < len(items):
            keep = sorted(np.random.default_rng(0).permutation(len(items))[:n])
            items = [items[i] for i in keep]
    return items, sorted({i.bias_type for i in items})


def edited_ss(loaded, items) -> float:
    from fairstamp.scoring import Scorer
    from fairstamp.scoring.pairs import pair_gaps, stereotype_percent

    scores = Scorer.from_loaded(loaded, progress=False).score(
        [s for i in items for s in (i.stereo, i.anti)]).mean
    return stereotype_percent(pair_gaps(scores))


def edit_worker(args: argparse.Namespace) -> dict[str, Any]:
    from fairstamp.data.training_text import training_text
    from fairstamp.evaluation import EvalConfig, evaluate
    from fairstamp.fast.train import FitConfig, fit_stamp
    from fairstamp.models import load
    from fairstamp.tracing import trace_bias

    meter = PeakMemory()
    phases: dict[str, Any] = {}
    with meter.phase("load", phases):
        loaded = load(args.model)
    params = sum(p.numel() for p in loaded.model.parameters())
    layer = round(2 * loaded.num_layers / 3)
    items, types = sized_items(args.size)
    if args.phases:
        with meter.phase("evaluate", phases):
            evaluate(loaded, EvalConfig(model=args.model, suite="biascope", bias_types=["gender"],
                                        n_resamples=100, data_dir=str(DATA)), progress=False)
        with meter.phase("trace", phases):
            trace_bias(loaded, items[:6], components=("mlp",), samples=3, heatmap_items=0,
                       progress=False)
    text = training_text(types, data_dir=DATA)
    ss_before = edited_ss(loaded, items)
    config = FitConfig(max_steps=args.steps, min_steps=args.steps + 1, check_every=args.steps)
    with meter.phase("edit", phases):
        fit = fit_stamp(loaded, items, layer, text=text, config=config, progress=False)
    return {
        "model": args.model, "size": args.size, "items": len(items), "bias_types": types,
        "layer": layer, "parameters": params,
        "steps": fit.steps, "setup_s": round(fit.setup_seconds, 2),
        "step_s": round((fit.seconds - fit.check_seconds) / fit.steps, 3),
        "check_s": round(fit.check_seconds, 2),
        "tokens_per_step": round(fit.tokens / fit.steps, 1),
        "us_per_token": round(1e6 * (fit.seconds - fit.check_seconds) / fit.tokens, 2),
        "counterfactual_weight": fit.counterfactual_weight, "vocab_size": fit.vocab_size,
        "ss_before": round(ss_before, 2), "ss_after": round(fit.history[-1]["ss"], 2),
        "phases": phases,
    }


def score_worker(args: argparse.Namespace) -> dict[str, Any] | None:
    import torch

    from fairstamp.models import load
    from fairstamp.scoring import Scorer
    from fairstamp.utils.distributed import current_processes
    from scoring import bare_forward, stereoset_contexts

    torch.set_num_threads(args.threads)
    processes = current_processes()
    loaded = load(args.model)
    contexts = stereoset_contexts(DATA / "stereoset" / "dev.json")[:: args.eval_every]
    sentences = [s for context in contexts for s in context]
    scorer = Scorer.from_loaded(loaded, progress=False, processes=processes)
    scorer.score(sentences[:64])  # warm-up
    if args.way == "bare":
        seconds, totals = bare_forward(loaded.model, scorer, sentences), None
    else:
        start = time.perf_counter()
        totals = scorer.score(sentences).total.tolist()
        seconds = time.perf_counter() - start
    if not processes.is_main:
        return None
    return {"way": args.way, "processes": processes.count, "threads": args.threads,
            "sentences": len(sentences), "seconds": round(seconds, 2), "totals": totals}


# -- the driver -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(cache: Path, name: str, argv: list[str], *, processes: int = 1,
            threads: int = 2) -> dict[str, Any]:
    """Run one worker in its own process(es) (cached in `cache/name.json`)."""
    path = cache / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, __file__, "--worker", *argv, "--result", str(path)]
    if processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), *command[1:]]
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=HERE)
    print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return json.loads(path.read_text())


def slug(model: str) -> str:
    """A model alias or folder as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if os.sep in model else model)


def evaluation_rows(cache: Path, model: str, every: int) -> dict[str, Any]:
    common = ["score", "--model", model, "--eval-every", str(every)]
    ways = {
        "one process, 2 threads": measure(cache, "eval-1x2", [*common, "--threads", "2"]),
        "two processes, 1 thread each": measure(cache, "eval-2x1", [*common, "--threads", "1"],
                                                processes=2, threads=1),
        "one process, 1 thread": measure(cache, "eval-1x1", [*common, "--threads", "1"],
                                         threads=1),
        "bare forward pass, 2 threads": measure(cache, "eval-bare",
                                                [*common, "--threads", "2", "--way", "bare"]),
    }
    one = np.array(ways["one process, 2 threads"]["totals"])
    two = np.array(ways["two processes, 1 thread each"]["totals"])
    return {"ways": {k: {x: v[x] for x in ("processes", "threads", "sentences", "seconds")}
                     for k, v in ways.items()},
            "max_abs_difference_2_vs_1_processes": float(np.max(np.abs(one - two)))}


def markdown(result: dict[str, Any]) -> str:
    ev, items, models = result["evaluation"], result["items"], result["models"]
    base = ev["ways"]["one process, 2 threads"]["seconds"]
    lines = ["# Cost curves", "",
             f"`{' '.join(['python benchmarks/cost_curves.py', result['argv']]).strip()}` — "
             "one run, "
             f"{result['machine']}, every measurement in a process of its own. "
             "Ratios are against the first row of each table.", "",
             f"## Evaluation: {ev['ways']['one process, 2 threads']['sentences']} StereoSet dev "
             f"sentences, {result['eval_model']}", "",
             "| way | seconds | sentences/s | time against one process, 2 threads |",
             "|---|---:|---:|---:|"]
    for name, way in ev["ways"].items():
        lines.append(f"| {name} | {way['seconds']:.1f} | {way['sentences'] / way['seconds']:.1f} "
                     f"| {way['seconds'] / base:.2f}x |")
    lines += ["", "Largest difference between a sentence's score (summed log-probability) under "
              f"two processes and one: {ev['max_abs_difference_2_vs_1_processes']:.1e} nats.",
              "", f"## An edit as the edited items grow ({items[0]['model']}, layer "
              f"{items[0]['layer']}, {items[0]['steps']} steps, FAST's default recipe)", "",
              "| items | bias types | setup s | s/step | SS check s | tokens/step | µs/token | "
              "peak GiB | SS before → after | step time against the first |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in items:
        lines.append(
            f"| {row['items']:,}{' (all)' if row['size'] == 'all' else ''} | "
            f"{', '.join(row['bias_types'])} | "
            f"{row['setup_s']:.0f} | {row['step_s']:.2f} | {row['check_s']:.1f} | "
            f"{row['tokens_per_step']:.0f} | "
            f"{row['us_per_token']:.0f} | {row['phases']['edit']['peak_rss_gib']:.2f} | "
            f"{row['ss_before']:.1f} → {row['ss_after']:.1f} | "
            f"{row['step_s'] / items[0]['step_s']:.2f}x |")
    small = models[0]
    lines += ["", "s/step leaves out the SS check (scoring every edited pair, once, at the last "
              "step); setup is the lower-layer cache, L_m's original scores and the KL targets; "
              "the peak is the whole process's during the setup and steps.", "",
              "## An edit as the model grows (100 items of gender + race + religion, "
              f"{small['steps']} steps)", "",
              "| model | parameters | model GiB | layer | vocabulary trained | s/step | "
              "tokens/step | µs/token | per token against the first |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in models:
        lines.append(f"| {row['model']} | {row['parameters'] / 1e6:.0f}M | {row['model_gib']:.2f} "
                     f"| {row['layer']} | {row['vocab_size']:,} | {row['step_s']:.2f} | "
                     f"{row['tokens_per_step']:.0f} | {row['us_per_token']:.0f} | "
                     f"{row['us_per_token'] / small['us_per_token']:.2f}x |")
    lines += ["", "## Peak memory of every phase against the model's own size", "",
              "| model | model GiB | phase | seconds | peak resident GiB | peak / model size |",
              "|---|---:|---|---:|---:|---:|"]
    for row in models:
        for phase, value in row["phases"].items():
            lines.append(f"| {row['model']} | {row['model_gib']:.2f} | {phase} | "
                         f"{value['seconds']:.0f} | {value['peak_rss_gib']:.2f} | "
                         f"{value['peak_rss_gib'] / row['model_gib']:.1f}x |")
    lines += ["", "Phases: load (the converted safetensors folder), evaluate (BiaScope on "
              "StereoSet gender: SS, PS, held-out SS, retention), trace (6 items, MLP, 3 noise "
              "samples), edit (setup and steps). The peak is the whole process's resident "
              "memory, Python and torch included; a model's safetensors weights are "
              "memory-mapped, so after loading only the pages read so far are resident.", "",
              "![cost curves](cost_curves.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    from fairstamp.reporting.plots import cost_curves

    cost_curves(result, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--sizes", default="25,100,400,1160,all")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    # a worker's own options
    parser.add_argument("--worker", choices=("edit", "score"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--way", default="scorer", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        sys.path.insert(0, str(HERE))  # benchmarks/scoring.py's helpers
        result = (edit_worker if args.worker == "edit" else score_worker)(args)
        if result is not None:
            from fairstamp.utils.io import atomic_write_json

            atomic_write_json(args.result, result)
        return 0

    from fairstamp.utils.io import atomic_write_json, atomic_write_text
    from fairstamp.utils.repro import library_versions

    cache = args.out / "cost_curves"
    cache.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    sizes = args.sizes.split(",")
    steps = ["--steps", str(args.steps)]
    evaluation = evaluation_rows(cache, models[0], args.eval_every)
    items = []
    for size in sizes:
        phases = ["--phases"] if size == "100" else []
        items.append(measure(cache, f"edit-{slug(models[0])}-{size}",
                             ["edit", "--model", models[0], "--size", size, *steps, *phases]))
    per_model = [measure(cache, f"edit-{slug(model)}-100",
                         ["edit", "--model", model, "--size", "100", *steps, "--phases"])
                 for model in models]
    for row in [*items, *per_model]:
        row["model_gib"] = row["parameters"] * 4 / GIB  # unrounded: a tiny model's is ~0
    result = {
        "benchmark": "cost_curves",
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        "eval_model": models[0], "evaluation": evaluation, "items": items, "models": per_model,
        "versions": library_versions(),
    }
    atomic_write_json(args.out / "cost_curves.json", result)
    plot(result, args.out / "cost_curves.png")
    text = markdown(result)
    atomic_write_text(args.out / "cost_curves.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    from fairstamp.utils.distributed import exit_process

    exit_process(main())  # a worker of two processes leaves its group (sys.exit for one)
