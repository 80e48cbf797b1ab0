"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.models.aliases import DEFAULT_MODEL
from fairstamp.runs.config import QUICK_MAX_STEPS

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Alias (smollm2-135m, gemma-3-270m), local folder or "
                 "Hugging Face id of a causal LM."),
]
DEFAULT = DEFAULT_MODEL

CacheDirOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional on 3.10
    typer.Option("--cache-dir", help="Where converted models are cached "
                 "(default: $FAIRSTAMP_CACHE or ~/.cache/fairstamp)."),
]
DeviceOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)."),
]
DeviceMapOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--device-map", help="Spread the model over devices, module by module "
                 "(accelerate): auto | balanced | balanced_low_0 | sequential | one device (cpu, "
                 "cuda:0) | a JSON object or .json file of module names to devices (a GPU "
                 "number, cuda:N, cpu, disk). Instead of --device."),
]
MaxMemoryOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--max-memory", help="Memory per device for --device-map's strategy, e.g. "
                 "0=10GiB,cpu=30GiB (what does not fit is offloaded to disk); implies "
                 "--device-map auto."),
]
OffloadFolderOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--offload-folder", help="Where disk-offloaded weights are written when they "
                 "cannot be read in place (a safetensors checkpoint, e.g. every alias, needs "
                 "none)."),
]
DtypeOpt = Annotated[
    str,
    typer.Option("--dtype", help="Precision of the frozen model: float32 | bfloat16 | float16 "
                 "(stamps, optimiser state, losses and scores stay float32)."),
]
DEFAULT_DTYPE = "float32"
BatchTokensOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--batch-tokens", min=16,
                 help="Padded tokens per forward pass (default: what fits 512 MiB of logits)."),
]


MaxSentenceTokens = Annotated[int, typer.Option(
    "--max-sentence-tokens", min=1,
    help="Refuse any input sentence longer than this many tokens (texts over 32 characters a "
    "token are refused while reading, before any tokenizer sees them).")]


def split_list(value: str | None) -> list[str] | None:
    """`"gender, race"` → ["gender", "race"]; None or empty → None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# -- the edit run's options (`debias` and `bench`), declared once; defaults from EditRunConfig ----

Layer = Annotated[Optional[int], typer.Option(  # noqa: UP045
    min=0, help="The layer to edit (the stamp goes after its MLP; MEMIT edits the layers ending "
    "there). Default: --layer-rule.")]
LayerRule = Annotated[str, typer.Option(
    help="How the layer is picked when --layer is not given: measured (the model's "
    "cross-validated layer where fairstamp has one: 9 on gemma-3-270m; else two-thirds), "
    "two-thirds (layer round(2/3 × layers); best in the layer sweep, docs/fast.md), "
    "argmax-after-first or argmax (the traced decisive layer).")]
Data = Annotated[str, typer.Option(
    help="stereoset | crows | a file: SPEC §2 bias JSONL, StereoSet .json or CrowS-Pairs .csv.")]
BiasTypes = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="Comma-separated bias types to edit, e.g. gender,race,religion (empty: all).")]
Limit = Annotated[Optional[int], typer.Option(  # noqa: UP045
    min=1, help="At most N bias items.")]
HeldOutFraction = Annotated[float, typer.Option(
    min=0.0, max=0.9, help="Share of targets never edited (held-out SS).")]
TraceItems = Annotated[int, typer.Option(min=1, help="Edited items traced to locate the bias.")]
TraceSamples = Annotated[int, typer.Option(min=1, help="Noise samples per traced item.")]
Passages = Annotated[int, typer.Option(
    min=0, help="WikiText-2 valid passages of 300 words in the generic-text KL term, besides 200 "
    "sentences (0: sentences only; docs/fast.md, Perplexity).")]
Suite = Annotated[str, typer.Option(help="Evaluation before/after: all | biascope | stereoset | "
                                   "crows | general | transfer.")]
Quick = Annotated[bool, typer.Option(
    "--quick", help="Small general-ability and transfer subsets and a short trace (the README's "
    f"quick start on a CPU); `debias` also trains {QUICK_MAX_STEPS} steps unless "
    "--max-steps is given, `bench` leaves each method's training to its options.")]
GeneralLimits = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="Subset sizes of the general suite, as in `fairstamp eval`.")]
TransferLimits = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="Subset sizes of the transfer suite, as in `fairstamp eval` (--quick: bbq=5,"
    "winobias=50,bold=2).")]
Seed = Annotated[int, typer.Option(help="Seed of the split, tracing, every fit and the "
                                   "bootstrap.")]
Bootstrap = Annotated[int, typer.Option(min=0, help="Bootstrap resamples for CIs.")]
Folds = Annotated[int, typer.Option(
    min=1, help="K > 1: also cross-validate by target — K more fits, each with one K-th of the "
    "targets held out — and report held-out SS/LMS pooled over every target, with CIs per bias "
    "type (docs/fast.md, Cross-validation by target). 1: the single split only.")]
DataDir = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    help="Public data folder (default: $FAIRSTAMP_DATA or ../shared/data).")]


def comma_list(values: list[str] | None) -> str:
    """The CLI spelling of a list default (`split_list` reads it back)."""
    return ",".join(values or [])
