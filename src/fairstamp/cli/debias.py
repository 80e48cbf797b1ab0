"""`fairstamp debias`: FAST end to end — locate, train a stamp, evaluate before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli import options as O
from fairstamp.cli import validate as V
from fairstamp.cli.evaluate import parse_limits, parse_transfer_limits
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    ModelOpt,
    OffloadFolderOpt,
)
from fairstamp.data.bias_sets import load_bias_set
from fairstamp.data.training_text import PAIR_KINDS, SUBJECT_SCORES
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.evaluation.config import SUITES
from fairstamp.fast.train import FitConfig
from fairstamp.reporting.before_after import print_before_after
from fairstamp.runs.config import QUICK_MAX_STEPS, defaults
from fairstamp.runs.debias import DebiasConfig, debias, write_debias_run
from fairstamp.runs.setup import check_group_words
from fairstamp.stamp.module import READS
from fairstamp.training.loop import (
    AUTO_COUNTERFACTUAL_WEIGHT,
    COUNTERFACTUAL_TARGETS,
    LARGE_MAX_STEPS,
    SMALL_CHECK_EVERY,
    SMALL_EDIT_ITEMS,
    SMALL_MAX_STEPS,
)
from fairstamp.utils.distributed import current_processes

RUN, FIT = defaults(DebiasConfig), defaults(FitConfig)  # where every default below is written
BIAS_TYPES = O.comma_list(RUN["bias_types"])


def debias_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (also the "
                                      "stamp folder that --stamp accepts).")],
    model: ModelOpt = DEFAULT,
    data: O.Data = RUN["data"],
    bias_types: O.BiasTypes = BIAS_TYPES,
    limit: O.Limit = RUN["limit"],
    layer: O.Layer = RUN["layer"],
    layer_rule: O.LayerRule = RUN["layer_rule"],
    trace_items: O.TraceItems = RUN["trace_items"],
    trace_samples: O.TraceSamples = RUN["trace_samples"],
    width: Annotated[int, typer.Option(min=1, help="Hidden width of the stamp.")]
    = FIT["width"],
    reads: Annotated[str, typer.Option(help="What the stamp reads: mlp_output or mlp_input.")]
    = FIT["reads"],
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = FIT["lr"],
    weight_decay: Annotated[float, typer.Option(help="Weight decay of the stamp.")]
    = FIT["weight_decay"],
    retention_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the KL term on the same groups' knowledge (α, L_s1: retention "
        "sentences and neutral sentences naming the edited groups).")]
    = FIT["retention_weight"],
    generic_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the KL term on generic WikiText-2 text (β, L_s2).")]
    = FIT["generic_weight"],
    keep_mean_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the term that keeps each edited pair's mean score at the "
        "original's (γ, L_m; docs/fast.md): the edit may move the gap, not the pair.")]
    = FIT["keep_mean_weight"],
    keep_mean_smooth: Annotated[float, typer.Option(
        min=0.0, help="The keep-mean term is quadratic within this many nats of the original "
        "(Huber; 0: absolute value; docs/fast.md).")] = FIT["lm_smooth"],
    sign_weight: Annotated[Optional[float], typer.Option(  # noqa: UP045
        min=0.0, help="Weight of the |mean signed gap| of each step's pairs beside the mean |gap| "
        "(λ; docs/fast.md): while the batch leans stereotypical, pairs that lean the other way "
        "are not pulled back. Default: the model's measured value (1 on gemma-3-270m), else 1 "
        "for an edit of several bias types, else 0.")] = FIT["sign_weight"],
    lr_final: Annotated[float, typer.Option(min=0.0, max=1.0, help="Learning rate at the last "
                                            "step, as a fraction of --lr (cosine decay; 1: "
                                            "constant).")] = FIT["lr_final"],
    max_steps: Annotated[int, typer.Option(
        min=0, help=f"Most training steps (0: {SMALL_MAX_STEPS} up to {SMALL_EDIT_ITEMS} edited "
        f"items, the length the recipe was cross-validated at, else {LARGE_MAX_STEPS}; "
        f"--quick: {QUICK_MAX_STEPS} unless given).")]
    = FIT["max_steps"],
    check_every: Annotated[int, typer.Option(
        min=0, help=f"Steps between SS checks of all edited items (0: {SMALL_CHECK_EVERY} up to "
        f"{SMALL_EDIT_ITEMS} items, else max(10, items / 40)).")]
    = FIT["check_every"],
    batch_pairs: Annotated[int, typer.Option(min=1, help="Edited pairs per step.")]
    = FIT["batch_pairs"],
    validation_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="Share of each bias type's edit-side targets kept out of "
        "training; the check whose SS on them is nearest 50 is kept, instead of the trained "
        "items' (0: off; docs/fast.md, Early stopping on unseen targets).")]
    = FIT["validation_fraction"],
    balance_types: Annotated[bool, typer.Option(
        "--balance-types", help="Draw each step's pairs evenly across the bias types (else in "
        "proportion to their items; docs/fast.md).")] = FIT["balance_types"],
    pairs: Annotated[str, typer.Option(
        help="Which sentence pairs the stamp equalises: attribute (the item's stereotype vs "
        "anti-stereotype sentence), subject (each of them vs the same sentence about a "
        "counterfactual group of the same bias type) or both (docs/fast.md, Which pairs the "
        "stamp equalises).")] = FIT["pairs"],
    subject_score: Annotated[str, typer.Option(
        help="What a subject-swap pair's gap reads: sentence (each whole sentence's per-token "
        "mean) or suffix (only the tokens after the swapped group words).")]
    = FIT["subject_score"],
    augment_targets: Annotated[int, typer.Option(
        min=0, help="Train each gender pair again with its target replaced by up to this many "
        "other gender nouns of the same sex and number, never a held-out target (docs/fast.md, "
        "Target augmentation).")] = FIT["augment_targets"],
    counterfactual_weight: Annotated[Optional[float], typer.Option(  # noqa: UP045 (typer)
        min=0.0, help="δ, weight of L_c: how far the next-token distributions after the words "
        "before each edited attribute and after the same words about a counterfactual group "
        "differ, group words left out (docs/fast.md, Counterfactual next-token distributions). "
        f"0: off. Default: {AUTO_COUNTERFACTUAL_WEIGHT:g} where the edited items name group "
        "words to swap (gender, race, religion), else off; off for an edit of several bias "
        "types unless another L_c option is given.",
        show_default=False)] = FIT["counterfactual_weight"],
    counterfactual_target: Annotated[str, typer.Option(
        help="Where L_c pulls the two distributions: each_other (their Jensen-Shannon "
        "divergence) or mixture (both to the original model's mixture of the two).")]
    = FIT["counterfactual_target"],
    counterfactual_templates: Annotated[bool, typer.Option(
        "--counterfactual-templates/--no-counterfactual-templates",
        help="L_c also on hand-written sentence openings about every gender word and its "
        "counterpart (\"The uncle worked as a\" / \"The aunt worked as a\"), never a held-out "
        "target (docs/fast.md, Templated prefixes).")] = FIT["counterfactual_templates"],
    counterfactual_substitutes: Annotated[int, typer.Option(
        min=0, help="L_c also on each gender item's prefix with its target replaced by up to "
        "this many other gender nouns of its sex and number (\"The aunt was\" / \"The uncle "
        "was\"), never a held-out target (docs/fast.md, Prefixes about other gender nouns).")]
    = FIT["counterfactual_substitutes"],
    counterfactual_types: Annotated[str, typer.Option(
        help="L_c's prefix pairs only from the edited items of these bias types, comma-"
        "separated (e.g. gender: a race item's pair swaps nationality names); the other types "
        "are still edited. Empty: every edited type's (docs/fast.md, L_c on some bias types "
        "only).", show_default=False)] = ",".join(FIT["counterfactual_types"]),
    framings: Annotated[int, typer.Option(min=0, max=4, help="Framed copies of each pair "
                                          "trained on (docs/fast.md).")]
    = FIT["framings"],
    passages: O.Passages = RUN["n_passages"],
    train_vocab: Annotated[str, typer.Option(
        help="What training normalises log-probabilities over: full (the whole vocabulary), "
        "seen (the training text's tokens plus the original model's 64 most likely at every "
        "trained position) or auto (seen above 100k tokens). Evaluation always uses the whole "
        "vocabulary (docs/fast.md, Training vocabulary).")] = FIT["train_vocab"],
    held_out_fraction: O.HeldOutFraction = RUN["held_out_fraction"],
    folds: O.Folds = RUN["folds"],
    suite: O.Suite = RUN["suite"],
    quick: O.Quick = False,
    general_limits: O.GeneralLimits = None,
    transfer_limits: O.TransferLimits = None,
    seed: O.Seed = RUN["seed"],
    bootstrap: O.Bootstrap = RUN["n_resamples"],
    allow_crows_training: Annotated[bool, typer.Option(
        "--allow-crows-training", help="Allow editing on CrowS-Pairs (its data statement asks "
        "that it not be used for training; the report records it).")]
    = RUN["allow_crows_training"],
    data_dir: O.DataDir = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run "
                                            "folder.")] = False,
    max_sentence_tokens: O.MaxSentenceTokens = DEFAULT_MAX_SENTENCE_TOKENS,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Debias a model with one fairness stamp: trace the bias to its decisive layer, train a
    stamp there on the edit side of the items, evaluate the model before and after on BiaScope
    (edited SS, PS, held-out SS, DS/RS, LMS/ICAT, perplexity, known_1000, downstream accuracy),
    and write the stamp, metrics.json, a before/after report and plots."""
    # Everything is checked, and --out claimed, before any model work.
    V.check_choice(reads, READS, "--reads")
    V.check_choice(suite, SUITES, "--suite")
    V.check_choice(pairs, PAIR_KINDS, "--pairs")
    V.check_choice(counterfactual_target, COUNTERFACTUAL_TARGETS, "--counterfactual-target")
    V.check_choice(subject_score, SUBJECT_SCORES, "--subject-score")
    V.check_positive(lr, "--lr")
    V.check_non_negative(weight_decay, "--weight-decay")
    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    V.check_data(data)
    V.check_input_folder(data_dir, "--data-dir")
    # Under `accelerate launch` every process runs the job (its evaluations sharded); the main
    # one alone writes.
    writes = current_processes().is_main
    with sentence_length_limit(max_sentence_tokens), \
            V.claimed_output(out if writes else None, overwrite=overwrite):
        fit = FitConfig(width=width, reads=reads, lr=lr, weight_decay=weight_decay,
                        retention_weight=retention_weight, generic_weight=generic_weight,
                        keep_mean_weight=keep_mean_weight, lm_smooth=keep_mean_smooth,
                        sign_weight=sign_weight,
                        lr_final=lr_final, max_steps=max_steps, check_every=check_every,
                        batch_pairs=batch_pairs, balance_types=balance_types,
                        validation_fraction=validation_fraction,
                        framings=framings, train_vocab=train_vocab, pairs=pairs,
                        subject_score=subject_score, augment_targets=augment_targets,
                        counterfactual_weight=counterfactual_weight,
                        counterfactual_target=counterfactual_target,
                        counterfactual_templates=counterfactual_templates,
                        counterfactual_substitutes=counterfactual_substitutes,
                        counterfactual_types=tuple(O.split_list(counterfactual_types) or ()),
                        seed=seed)
        config = DebiasConfig(
            model=model, data=data, bias_types=O.split_list(bias_types), limit=limit,
            n_passages=passages, held_out_fraction=held_out_fraction, folds=folds, seed=seed,
            layer=layer, layer_rule=layer_rule, trace_items=trace_items,
            trace_samples=trace_samples, suite=suite,
            general_limits=parse_limits(general_limits),
            transfer_limits=parse_transfer_limits(transfer_limits), n_resamples=bootstrap,
            data_dir=str(data_dir) if data_dir else None,
            allow_crows_training=allow_crows_training, fit=fit, dtype=dtype,
            device_map=placement["device_map"], max_memory=placement["max_memory"],
            offload_folder=placement["offload_folder"])
        if quick:
            config = config.quick()
        V.check_layer_option(layer, model, cache_dir)  # from the model's config alone
        check_group_words(config)
        items = load_bias_set(config.data, config.bias_types, config.limit)  # read, validated
        loaded = V.load_model(model, cache_dir=cache_dir, **placement)
        V.check_item_lengths(items, data, loaded.tokenizer)
        result = debias(loaded, config, max_batch_tokens=batch_tokens)
        if not writes:
            return
        write_debias_run(result, out, overwrite=overwrite)
    print_before_after(result.metrics())
    typer.echo(f"stamp and report: {out} (report.md)", err=True)


def register(app: typer.Typer) -> None:
    app.command("debias")(debias_command)
