"""`fairstamp debias`: FAST end to end — locate, train a stamp, evaluate before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli.options import DEFAULT, BatchTokensOpt, CacheDirOpt, DeviceOpt, ModelOpt

#: `--quick`: general-ability subsets small enough for a few minutes on a laptop CPU.
QUICK_GENERAL_LIMITS = {"wikitext2": 4096, "known_1000": 200, "boolq": 50, "copa": 50,
                        "winogrande": 50, "piqa": 50, "arc_easy": 50}
QUICK_TRACE_ITEMS = 6
QUICK_TRACE_SAMPLES = 3
QUICK_MAX_STEPS = 60


def debias_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (also the "
                                      "stamp folder that --stamp accepts).")],
    model: ModelOpt = DEFAULT,
    data: Annotated[str, typer.Option(
        help="stereoset | crows | a file: SPEC §2 bias JSONL, StereoSet .json or CrowS-Pairs "
        ".csv.")] = "stereoset",
    bias_types: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated bias types to edit, e.g. gender,race,religion.")] = "gender",
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most N bias items.")]  # noqa: UP045
    = None,
    layer: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Put the stamp after this layer's MLP instead of tracing for the decisive layer.")]
    = None,
    layer_rule: Annotated[str, typer.Option(
        help="How the layer is picked: two-thirds (layer round(2/3 × layers); best in the layer "
        "sweep, docs/fast.md), argmax-after-first or argmax (the traced decisive layer).")]
    = "two-thirds",
    trace_items: Annotated[int, typer.Option(min=1, help="Edited items traced to locate the "
                                             "layer.")] = 40,
    trace_samples: Annotated[int, typer.Option(min=1, help="Noise samples per traced item.")]
    = 5,
    width: Annotated[int, typer.Option(min=1, help="Hidden width of the stamp.")] = 256,
    reads: Annotated[str, typer.Option(help="What the stamp reads: mlp_output or mlp_input.")]
    = "mlp_output",
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay of the stamp.")] = 1e-3,
    alpha: Annotated[float, typer.Option(help="Weight of L_s1 (same groups' knowledge).")] = 1.0,
    beta: Annotated[float, typer.Option(help="Weight of L_s2 (general text).")] = 1.0,
    gamma: Annotated[float, typer.Option(help="Weight of L_m: each edited pair's mean score "
                                         "kept at the original's (docs/fast.md).")] = 1.0,
    lm_smooth: Annotated[float, typer.Option(min=0.0, help="L_m is quadratic within this many "
                                             "nats of the original (Huber; 0: absolute value; "
                                             "docs/fast.md).")] = 1e-3,
    lr_final: Annotated[float, typer.Option(min=0.0, max=1.0, help="Learning rate at the last "
                                            "step, as a fraction of --lr (cosine decay; 1: "
                                            "constant).")] = 1.0,
    max_steps: Annotated[int, typer.Option(min=1, help="Most training steps.")] = 200,
    check_every: Annotated[int, typer.Option(min=0, help="Steps between SS checks of all "
                                             "edited items (0: max(10, items / 40)).")] = 0,
    batch_pairs: Annotated[int, typer.Option(min=1, help="Edited pairs per step.")] = 32,
    balance_types: Annotated[bool, typer.Option(
        "--balance-types", help="Draw each step's pairs evenly across the bias types (else in "
        "proportion to their items; docs/fast.md).")] = False,
    framings: Annotated[int, typer.Option(min=0, max=4, help="Framed copies of each pair "
                                          "trained on (docs/fast.md).")] = 2,
    passages: Annotated[int, typer.Option(min=0, help="WikiText-2 valid passages of 300 words "
                                          "in L_s2, besides 200 sentences (0: sentences only; "
                                          "docs/fast.md, Perplexity).")] = 32,
    train_vocab: Annotated[str, typer.Option(
        help="What training normalises log-probabilities over: full (the whole vocabulary), "
        "seen (the training text's tokens plus the original model's 64 most likely at every "
        "trained position) or auto (seen above 100k tokens). Evaluation always uses the whole "
        "vocabulary (docs/fast.md, Training vocabulary).")] = "auto",
    held_out_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Share of targets never edited (held-out SS).")] = 0.2,
    suite: Annotated[str, typer.Option(help="Evaluation before/after: all | biascope | "
                                       "stereoset.")] = "all",
    quick: Annotated[bool, typer.Option(
        "--quick", help=f"Small general-ability subsets, at most {QUICK_TRACE_ITEMS} traced "
        f"items with {QUICK_TRACE_SAMPLES} noise samples, at most {QUICK_MAX_STEPS} training "
        "steps (the README's quick start on a CPU).")] = False,
    general_limits: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Subset sizes of the general suite, as in `fairstamp eval`.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, tracing, training and "
                                      "bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for CIs.")] = 1000,
    allow_crows_training: Annotated[bool, typer.Option(
        "--allow-crows-training", help="Allow editing on CrowS-Pairs (its data statement asks "
        "that it not be used for training; the report records it).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Public data folder (default: $FAIRSTAMP_DATA or ../shared/data).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run "
                                            "folder.")] = False,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Debias a model with one fairness stamp: trace the bias to its decisive layer, train a
    stamp there on the edit side of the items, evaluate the model before and after on BiaScope
    (edited SS, PS, held-out SS, DS/RS, LMS/ICAT, perplexity, known_1000, downstream accuracy),
    and write the stamp, metrics.json, a before/after report and plots."""
    from fairstamp.cli.evaluate import parse_limits
    from fairstamp.cli.options import split_list
    from fairstamp.errors import FairstampError
    from fairstamp.fast.train import FitConfig
    from fairstamp.models import load
    from fairstamp.reporting.before_after import print_before_after
    from fairstamp.runs.debias import DebiasConfig, debias, write_debias_run

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    limits = dict(QUICK_GENERAL_LIMITS) if quick else {}
    if quick:
        trace_items = min(trace_items, QUICK_TRACE_ITEMS)
        trace_samples = min(trace_samples, QUICK_TRACE_SAMPLES)
        max_steps = min(max_steps, QUICK_MAX_STEPS)
    limits.update(parse_limits(general_limits))
    try:
        fit = FitConfig(width=width, reads=reads, lr=lr, weight_decay=weight_decay, alpha=alpha,
                        beta=beta, gamma=gamma, lm_smooth=lm_smooth, lr_final=lr_final,
                        max_steps=max_steps, check_every=check_every,
                        batch_pairs=batch_pairs, balance_types=balance_types,
                        framings=framings, train_vocab=train_vocab, seed=seed)
        config = DebiasConfig(model=model, data=data, bias_types=split_list(bias_types),
                              limit=limit, n_passages=passages,
                              held_out_fraction=held_out_fraction, seed=seed, layer=layer,
                              layer_rule=layer_rule, trace_items=trace_items,
                              trace_samples=trace_samples, suite=suite,
                              general_limits=limits, n_resamples=bootstrap,
                              data_dir=str(data_dir) if data_dir else None,
                              allow_crows_training=allow_crows_training, fit=fit)
    except ValueError as exc:
        raise FairstampError(str(exc)) from None
    loaded = load(model, cache_dir=cache_dir, device=device)
    result = debias(loaded, config, max_batch_tokens=batch_tokens)
    write_debias_run(result, out, overwrite=overwrite)
    print_before_after(result.metrics())
    typer.echo(f"stamp and report: {out} (report.md)", err=True)


def register(app: typer.Typer) -> None:
    app.command("debias")(debias_command)
