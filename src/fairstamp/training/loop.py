"""The training loop of an edit at one layer: L = L_e + α·L_s1 + β·L_s2 (SPEC §4.3) + γ·L_m
(ours).

One loop (`train_at_layer`) trains any parameters that act at layer l under this loss: the stamp
(`fit_stamp`) or, for the FT-L baseline (methods/finetune.py), the weight of layer l's MLP output
projection. Everything below is shared by both.

- L_e (bias): mean over the edited pairs of |score(stereo) − score(anti)|, each score the sentence's
  per-token mean log-probability as the Scorer computes it. Training always uses the per-token
  mean, the evaluation's default: the SS watched for early stopping is the SS that `eval` reports
  with `--reduction mean`, not with `--reduction sum`. Which pairs: `pairs` (attribute swaps, the
  default; subject swaps; or both; data/training_text.py). A subject-swap pair's gap reads the
  whole sentences (`subject_score="sentence"`) or only the tokens after the swapped group words
  ("suffix": the pair's common token suffix; pairs without one are not trained on).
  `augment_targets` adds each gender pair again with its target replaced by other gender nouns
  of the same sex and number (data/counterfactual.py), never a held-out target.
- L_s1 (knowledge of the same groups) and L_s2 (general text): KL(original ‖ stamped) of the
  next-token distributions at every position. Each step draws `batch_kl` short sentences (group
  sentences for L_s1 and generic sentences for L_s2, mixed) and `batch_passages` generic passages
  of a few hundred words (batched apart); L_s2 is the mean of the generic sentences' KL and the
  passages' KL, so short and long contexts weigh the same. The original distributions never
  change, so they are computed once; each keeps its `kl_top_k` most likely tokens plus one
  bucket for the rest (the KL of that coarsened distribution, a lower bound of the full KL that
  equals it when the rest is negligible), which makes them small enough to hold for thousands
  of positions.
- L_m (weight `keep_mean_weight`, γ, 1 by default; 0 is SPEC's loss): mean over the edited pairs
  of the distance between the pair's mean score and the original model's (Huber: quadratic
  within `lm_smooth` nats, then absolute; `lm_smooth=0`: absolute): the edit may move the gap,
  not the pair as a whole.
- L_c (weight `counterfactual_weight`, δ; 0 here, and in FAST's FitConfig by default
  `AUTO_COUNTERFACTUAL_WEIGHT` where the edited items name group words that data/counterfactual.py
  swaps, else off; off too for FAST's edits of several bias types, fairstamp.fast.recipes) [ours]:
  mean over drawn edited items of the Jensen-Shannon divergence between the next-token
  distribution after the words before the item's attribute ("The mother was") and after the same
  words about a counterfactual group ("The father was"; data/counterfactual.py
  `counterfactual_prefixes`), over every token but the first tokens of the group words (which word
  comes next may follow the group; what is said about it should not). Unlike L_e it constrains the
  whole distribution at the position where the stereotype is chosen, not the item's two
  attributes.
  `counterfactual_target="mixture"` anchors both instead: the mean of KL(m₀ ‖ p) and KL(m₀ ‖ q),
  m₀ the original model's mixture ½(p₀ + q₀) of the two distributions, so that they meet where
  the original model stood on average instead of anywhere at all.
  `counterfactual_span="sentence"` compares the item's two whole sentences and their group
  swaps instead ("The mother was caring." / "The father was caring."), at every position from
  the last swapped token to the one before the end (those that predict the words the two
  share: the prefix's position among them), each pair's mean over its positions.
  `counterfactual_templates=True` adds hand-written openings about every gender word of the
  swap and its counterpart ("The uncle worked as a" / "The aunt worked as a";
  data/counterfactual.py `template_prefixes`) to the prefix pairs L_c draws from, where the edit
  has gender items. `counterfactual_substitutes=N` adds each gender item's prefix with its target
  replaced by up to N other gender nouns of its sex and number, and the same about the
  counterpart ("The aunt was" / "The uncle was"; data/counterfactual.py `substituted_prefixes`).
  `counterfactual_types=("gender",)` draws L_c's pairs from the edited items of those bias types
  only (the others are still edited by L_e): a race item's prefix pair swaps nationality names.
- The learning rate decays along a cosine to `lr_final` times its first value (1: constant).
- The layers below the stamp are frozen and untouched by it: their output is computed once per
  training sentence and reused (`reuse_lower=True`; benchmarks/stamp_training.py measures it).
- `train_vocab="seen"` trains as if the model's vocabulary were only the tokens that matter to
  the loss: every token of the training text plus the original model's `kl_top_k` most likely
  tokens at every trained position (found by one full-vocabulary pass in the setup). Every
  log-probability, L_m's original scores and the KL targets are then normalised over that
  subset; the SS checks and every evaluation use the whole vocabulary. On a 262k-token
  vocabulary the unembedding is most of a step's arithmetic (docs/fast.md, "Training
  vocabulary"). "full" is SPEC's loss as written; "auto" (the default) is "seen" for
  vocabularies over `SEEN_VOCAB_ABOVE` tokens (gemma-3-270m's 262k: 3.1x faster steps, the same
  gaps) and "full" below (smollm2-135m's 49k: 1.13x, not worth the setup pass).

Minibatches of pairs and KL sentences are drawn with the run's seed; every `check_every` steps (0,
the default: every 5 steps up to `SMALL_EDIT_ITEMS` edited items, chosen by cross-validation by
target; above, every max(10, ⌈items / 40⌉) steps, so that the checks, which score every edited
pair, stay a small share of the time on large sets) the SS and L_e of all edited pairs are
measured by the Scorer, exactly as `eval` measures them (packed rows, the lower layers
replayed), and training stops when SS is within `ss_tolerance` of 50 and L_e has stopped
falling (or at `max_steps`; 0: `step_limit`'s automatic length, `SMALL_MAX_STEPS` up to
`SMALL_EDIT_ITEMS` items, else `LARGE_MAX_STEPS`). With `keep_best` the stamp of the check
with SS closest to 50 (within `ss_tolerance` counts as equal; then the lowest L_e) is kept: SS
counts signs, so it wanders while |gap| shrinks. With `validation_fraction` > 0 a share of each
bias type's targets is set aside before training (`validation_split`, by a seeded hash of the
target): their items are never trained on, the checks score them too, and *their* SS and L_e
choose the kept check, so the step kept is the one that carried furthest to targets the stamp did
not see; the stopping rule still reads the trained items. A non-finite loss stops training with
`TrainingDiverged`; the edit is undone (the stamp detached, FT-L's weight restored) and nothing
is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fairstamp.data.counterfactual import (
    SWAPPED_TYPES,
    AttributeSwap,
    counterfactual_prefixes,
    subject_pairs,
    substituted_prefixes,
    template_prefixes,
)
from fairstamp.data.items import BiasItem
from fairstamp.data.splits import hashed_order, target_key, targets_by_type
from fairstamp.data.training_text import (
    PAIR_KINDS,
    SUBJECT_SCORES,
    neutral_sentences,
    training_pairs,
)
from fairstamp.errors import FairstampError
from fairstamp.scoring.batching import length_batches
from fairstamp.scoring.pairs import batch_lean, bias_loss, pair_gaps, pair_sums, stereotype_percent
from fairstamp.scoring.scorer import LowerLayerCache, Scorer
from fairstamp.scoring.upper import Batch, UpperForward, Vocabulary
from fairstamp.utils.devices import input_device
from fairstamp.utils.progress import progress_bar, progress_enabled

log = logging.getLogger(__name__)


#: What the training loss normalises log-probabilities over (`LoopSettings.train_vocab`).
TRAIN_VOCABS = ("auto", "full", "seen")
#: L_c's weight δ when `counterfactual_weight` is None and the edit has group words to swap
#: (cross-validated by target: docs/fast.md, "Counterfactual next-token distributions").
AUTO_COUNTERFACTUAL_WEIGHT = 3.0
#: What L_c pulls a prefix's and its counterfactual's next-token distributions to: "each_other"
#: (their Jensen-Shannon divergence) or "mixture" (the original model's mixture of the two).
COUNTERFACTUAL_TARGETS = ("each_other", "mixture")
#: Where L_c compares them: "prefix" (after the words before the item's attribute) or "sentence"
#: (at every position of the item's two sentences after the swapped group words).
COUNTERFACTUAL_SPANS = ("prefix", "sentence")
#: "auto" trains on the seen vocabulary when the model's has more tokens than this.
SEEN_VOCAB_ABOVE = 100_000
#: The automatic check interval: every SMALL_CHECK_EVERY steps for edits of at most
#: SMALL_EDIT_ITEMS items (cross-validated by target on smollm2-135m gender: docs/fast.md, "Which
#: check to keep"); larger edits keep the checks a small share of the time instead.
SMALL_EDIT_ITEMS = 400
SMALL_CHECK_EVERY = 5
#: The automatic step limit (`max_steps=0`): SMALL_MAX_STEPS for edits of at most
#: SMALL_EDIT_ITEMS items, the length every cross-validation of the recipe measured (docs/fast.md,
#: "Which check to keep": 100 steps kept a later check and lost knowledge), else LARGE_MAX_STEPS.
SMALL_MAX_STEPS = 60
LARGE_MAX_STEPS = 200


class TrainingDiverged(FairstampError):
    """The loss became NaN or infinite; no stamp was kept."""


@dataclass
class LoopSettings:
    """The knobs of the shared training loop (`train_at_layer`): loss weights, batching, checks,
    early stopping. Defaults: docs/fast.md."""

    retention_weight: float = 1.0  # α: weight of L_s1 (KL on the same groups' knowledge)
    generic_weight: float = 1.0  # β: weight of L_s2 (KL on generic text)
    keep_mean_weight: float = 1.0  # γ: weight of L_m (each edited pair's mean score kept)
    lm_smooth: float = 1e-3  # L_m quadratic within this many nats (Huber); 0: |·| (docs/fast.md)
    # λ: weight of the step's lean (|mean signed gap| of its pairs, per bias type) beside L_e's
    # mean |gap|: while a type leans stereotypical, its anti-leaning pairs are not pulled back
    sign_weight: float = 0.0
    max_steps: int = 200
    min_steps: int = 20
    batch_pairs: int = 32
    batch_kl: int = 16
    batch_passages: int = 1
    pass_size: int = 16  # sentences per forward pass within a step, grouped by length
    lr_final: float = 1.0  # learning rate at the last step, as a fraction of the first (cosine)
    check_every: int = 0  # 0: automatic (`check_interval`)
    balance_types: bool = False  # each step draws its pairs evenly across the items' bias types
    ss_tolerance: float = 1.0
    flat_tolerance: float = 0.05
    framings: int = 2
    kl_top_k: int = 64
    keep_best: bool = True
    # share of each bias type's targets kept out of training; their SS chooses the kept check
    # (0: the edited items' own SS does)
    validation_fraction: float = 0.0
    reuse_lower: bool = True
    train_vocab: str = "auto"  # "seen": the training text's tokens + the original's top-k
    pairs: str = "attribute"  # which pairs L_e equalises: attribute | subject | both
    subject_score: str = "sentence"  # what a subject pair's gap reads: sentence | suffix
    augment_targets: int = 0  # each gender pair again with up to this many other gender nouns
    # δ: weight of L_c (next-token distributions across group swaps); None: AUTO_COUNTERFACTUAL_
    # WEIGHT where the edited items name group words to swap, else off (`counterfactual_delta`;
    # FAST's FitConfig defaults to None, the loop and the FT-L baseline to 0)
    counterfactual_weight: float | None = 0.0
    counterfactual_target: str = "each_other"  # L_c: "each_other" (JS) | "mixture" (anchored)
    counterfactual_span: str = "prefix"  # L_c's positions: "prefix" | "sentence"
    # L_c also on hand-written openings about every gender word of the swap (template_prefixes)
    counterfactual_templates: bool = False
    # L_c also on each gender item's prefix with its target replaced by up to this many other
    # gender nouns of its sex and number (substituted_prefixes)
    counterfactual_substitutes: int = 0
    # L_c's prefix pairs only from the edited items of these bias types (empty: every edited
    # type's): e.g. ("gender",) keeps L_c off a race edit's nationality swaps
    counterfactual_types: tuple[str, ...] = ()
    seed: int = 0

    @property
    def needs_group_words(self) -> str | None:
        """What in these settings swaps group words (bias-bench's attribute words in the public
        data folder), or None when nothing does."""
        if self.pairs != "attribute":
            return f"pairs={self.pairs!r}"
        if self.counterfactual_weight:
            return "counterfactual_weight > 0"
        return None

    def __post_init__(self) -> None:
        if not 0.0 < self.lr_final <= 1.0:
            raise FairstampError(f"lr_final must be in (0, 1], got {self.lr_final}")
        weights = {"retention_weight": self.retention_weight,
                   "generic_weight": self.generic_weight,
                   "keep_mean_weight": self.keep_mean_weight,
                   "sign_weight": self.sign_weight,
                   "counterfactual_weight": self.counterfactual_weight}
        negative = [name for name, value in weights.items() if value is not None and value < 0]
        if negative:
            raise FairstampError(f"loss weights must be >= 0: {', '.join(negative)}")
        if self.lm_smooth < 0:
            raise FairstampError(f"lm_smooth must be >= 0, got {self.lm_smooth}")
        if self.pairs not in PAIR_KINDS:
            raise FairstampError(f"pairs must be one of {', '.join(PAIR_KINDS)}, got "
                                 f"{self.pairs!r}")
        if self.subject_score not in SUBJECT_SCORES:
            raise FairstampError(f"subject_score must be one of {', '.join(SUBJECT_SCORES)}, "
                                 f"got {self.subject_score!r}")
        if self.train_vocab not in TRAIN_VOCABS:
            raise FairstampError(f"train_vocab must be one of {', '.join(TRAIN_VOCABS)}, got "
                                 f"{self.train_vocab!r}")
        if self.augment_targets < 0:
            raise FairstampError(f"augment_targets must be >= 0, got {self.augment_targets}")
        if self.augment_targets and self.pairs == "subject":
            raise FairstampError("augment_targets copies attribute pairs: use it with pairs="
                                 "attribute or both, not subject")
        if self.counterfactual_target not in COUNTERFACTUAL_TARGETS:
            raise FairstampError(f"counterfactual_target must be one of "
                                 f"{', '.join(COUNTERFACTUAL_TARGETS)}, got "
                                 f"{self.counterfactual_target!r}")
        if self.counterfactual_span not in COUNTERFACTUAL_SPANS:
            raise FairstampError(f"counterfactual_span must be one of "
                                 f"{', '.join(COUNTERFACTUAL_SPANS)}, got "
                                 f"{self.counterfactual_span!r}")
        if self.counterfactual_span == "sentence" and self.counterfactual_target == "mixture":
            raise FairstampError("counterfactual_target='mixture' anchors one position per "
                                 "prefix pair: use it with counterfactual_span='prefix'")
        if self.counterfactual_templates and self.counterfactual_weight == 0:
            raise FairstampError("counterfactual_templates adds prefix pairs to L_c, which "
                                 "counterfactual_weight 0 turns off")
        if self.counterfactual_substitutes < 0:
            raise FairstampError(f"counterfactual_substitutes must be >= 0, got "
                                 f"{self.counterfactual_substitutes}")
        if self.counterfactual_substitutes and self.counterfactual_weight == 0:
            raise FairstampError("counterfactual_substitutes adds prefix pairs to L_c, which "
                                 "counterfactual_weight 0 turns off")
        if self.counterfactual_substitutes and self.counterfactual_span == "sentence":
            raise FairstampError("counterfactual_substitutes adds prefix pairs: use it with "
                                 "counterfactual_span='prefix'")
        self.counterfactual_types = tuple(self.counterfactual_types)
        unknown = sorted(set(self.counterfactual_types) - set(SWAPPED_TYPES))
        if unknown:
            raise FairstampError(f"counterfactual_types: L_c swaps the group words of "
                                 f"{', '.join(SWAPPED_TYPES)}, not {', '.join(unknown)}")
        if self.counterfactual_types and self.counterfactual_weight == 0:
            raise FairstampError("counterfactual_types chooses L_c's prefix pairs, which "
                                 "counterfactual_weight 0 turns off")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise FairstampError(f"validation_fraction must be in [0, 1), got "
                                 f"{self.validation_fraction}")
        if self.check_every < 0:
            raise FairstampError(f"check_every must be >= 0 (0: automatic), got "
                                 f"{self.check_every}")
        if self.max_steps < 0:
            raise FairstampError(f"max_steps must be >= 0 (0: automatic), got {self.max_steps}")

    def counterfactual_delta(self, items: Sequence[BiasItem],
                             group_swap: AttributeSwap | None) -> float:
        """L_c's weight for an edit of `items`: the one given, else AUTO_COUNTERFACTUAL_WEIGHT
        where some item names a group word before its attribute that `group_swap` swaps."""
        if self.counterfactual_weight is not None:
            return self.counterfactual_weight
        items = self.counterfactual_items(items)
        if group_swap is None or not counterfactual_prefixes(items, group_swap, seed=self.seed):
            whose = self.counterfactual_scope
            if self.counterfactual_templates:
                log.warning("counterfactual_templates ignored: L_c is off, since the edited "
                            "items%s name no group words to swap", whose)
            else:
                log.info("L_c off: the edited items%s name no group words to swap", whose)
            return 0.0
        return AUTO_COUNTERFACTUAL_WEIGHT

    @property
    def counterfactual_asked(self) -> bool:
        """Whether an option of L_c other than its weight is set (prefix pairs added or narrowed,
        another target or span): where δ is left automatic, L_c then stays on."""
        return bool(self.counterfactual_types or self.counterfactual_templates
                    or self.counterfactual_substitutes
                    or self.counterfactual_target != COUNTERFACTUAL_TARGETS[0]
                    or self.counterfactual_span != COUNTERFACTUAL_SPANS[0])

    @property
    def counterfactual_scope(self) -> str:
        """" of gender/race" where `counterfactual_types` narrows L_c's items, else "" (for
        messages about the edited items)."""
        return f" of {'/'.join(self.counterfactual_types)}" if self.counterfactual_types else ""

    def counterfactual_items(self, items: Sequence[BiasItem]) -> list[BiasItem]:
        """The edited items L_c draws its prefix pairs from: those of `counterfactual_types`,
        or all."""
        if not self.counterfactual_types:
            return list(items)
        return [i for i in items if i.bias_type in self.counterfactual_types]

    def step_limit(self, n_items: int) -> int:
        """Most training steps for `n_items` edited items: `max_steps`, or automatically
        `SMALL_MAX_STEPS` up to `SMALL_EDIT_ITEMS` items and `LARGE_MAX_STEPS` above."""
        if self.max_steps:
            return self.max_steps
        return SMALL_MAX_STEPS if n_items <= SMALL_EDIT_ITEMS else LARGE_MAX_STEPS

    def check_interval(self, n_items: int) -> int:
        """Steps between SS checks for `n_items` edited items: `check_every`, or automatically
        `SMALL_CHECK_EVERY` up to `SMALL_EDIT_ITEMS` items (docs/fast.md, "Which check to keep")
        and max(10, ⌈items / 40⌉) above."""
        if self.check_every:
            return self.check_every
        if n_items <= SMALL_EDIT_ITEMS:
            return SMALL_CHECK_EVERY
        return max(10, math.ceil(n_items / 40))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What `TrainRun.summary` keeps of each check: the SS and mean |gap| of every set it scored.
_CHECK_KEYS = ("step", "ss", "bias_loss_all", "validation_ss", "validation_bias_loss",
               "monitor_ss", "monitor_bias_loss", "monitor_gap")


@dataclass
class TrainRun:
    """How one run of the training loop went."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    stopped: str = ""
    best_step: int = 0
    vocab_size: int = 0  # tokens the loss normalised over (the whole vocabulary unless "seen")
    counterfactual_weight: float = 0.0  # the δ L_c trained with (0: off)
    tokens: int = 0  # tokens the steps ran through the layers above the edit (forward, backward)
    check_seconds: float = 0.0  # of `seconds`, the SS checks' share
    step_limit: int = 0  # the most steps it could run (`LoopSettings.step_limit`)
    # targets set aside to choose the kept check (`validation_fraction`), and their item count
    validation_targets: list[str] = field(default_factory=list)
    validation_items: int = 0

    def summary(self) -> dict[str, Any]:
        kept = next((h for h in self.history if h["step"] == self.best_step),
                    self.history[-1] if self.history else {})
        return {"steps": self.steps, "step_limit": self.step_limit,
                "seconds": round(self.seconds, 2),
                "setup_seconds": round(self.setup_seconds, 2), "stopped": self.stopped,
                "kept_step": self.best_step, "vocab_size": self.vocab_size,
                "counterfactual_weight": self.counterfactual_weight, "tokens": self.tokens,
                "check_seconds": round(self.check_seconds, 2),
                **({"validation_targets": self.validation_targets,
                    "validation_items": self.validation_items} if self.validation_items else {}),
                "final": kept,
                "checks": [{k: v for k, v in h.items() if k in _CHECK_KEYS}
                           for h in self.history]}


@dataclass
class _Sentences:
    """Token ids of training sentences and, with `reuse_lower`, the cached layer-l inputs."""

    ids: list[list[int]]
    hidden: list[torch.Tensor] | None = None
    original: torch.Tensor | None = None  # per sentence: the original model's score (L_m)
    start: list[int] | None = None  # per sentence: its first scored token (None: 1, all)


@dataclass
class _KLSet:
    """Sentences of one KL term, their cached targets and their draw order."""

    sents: _Sentences
    batch: int
    generic: torch.Tensor  # per sentence: counts toward L_s2 (else L_s1)
    targets: dict[str, Any] | None = None
    order: _Cycler | None = None
    chosen: list[int] = field(default_factory=list)


def _kl_ids(scorer: Scorer, text: str) -> list[int]:
    """A KL text's token ids, cut to the model's context length."""
    ids = scorer.encode(text)
    return ids[: scorer.max_length] if scorer.max_length else ids


@dataclass
class Trainable:
    """What `train_at_layer` trains: parameters that act at (or above) its layer, their optimizer,
    a hook run after every optimizer step (FT-L's norm constraint), and `undo`, which takes the
    edit off the model when training fails."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    description: str
    undo: Callable[[], None]
    after_step: Callable[[], None] | None = None
    what: str = "parameters"  # for the log
    kept: str = "edit"  # for the divergence message


def train_at_layer(
    loaded: Any,
    items: Sequence[BiasItem],
    layer: int,
    make: Callable[[], Trainable],
    *,
    retention_sentences: Sequence[str] = (),
    generic_sentences: Sequence[str] = (),
    generic_passages: Sequence[str] = (),
    config: LoopSettings,
    group_swap: AttributeSwap | None = None,
    monitor: Sequence[BiasItem] = (),
    progress: bool | None = None,
) -> TrainRun:
    """The one training loop of L = L_e + α·L_s1 + β·L_s2 + γ·L_m for an edit at `layer` (FAST's
    stamp, FT-L's projection weight): batching, the cached lower layers, KL targets, early stopping
    on SS, keep-best and the NaN guard.

    The KL targets are computed from the model as it is when called; `make` then creates or
    selects the parameters and puts them on the model (it runs after the targets exist). The
    layers below `layer` must not depend on the parameters (their output is cached). On success
    the parameters hold the kept step's values and their `requires_grad` flags are as before; on
    any error `undo` runs first. `group_swap` makes the subject-swap pairs of `config.pairs`
    "subject" and "both" (data/counterfactual.py). `monitor` items (cross-validation's held-out
    targets) are scored at every check and recorded in the history (`monitor_ss`,
    `monitor_bias_loss`, and `monitor_gap`, the signed mean gap stereo − anti: a steadier
    reading than SS, which counts signs): never trained on, and never read by any choice the
    loop makes.
    """
    if not items:
        raise FairstampError("no bias items to edit")
    if config.needs_group_words and group_swap is None:
        raise FairstampError(f"{config.needs_group_words} needs the group words to swap "
                             "(bias-bench's attribute words in the public data folder)")
    items, validation = validation_split(items, config.validation_fraction, seed=config.seed)
    if validation and group_swap is not None:  # as for held-out targets (EditSetup.swap_for)
        group_swap = group_swap.without(sorted({i.target for i in validation}))
    setup_start = time.perf_counter()
    model, arch = loaded.model, loaded.arch
    scorer = Scorer.from_loaded(loaded, progress=False)
    # Token ids go to the first module's device; everything computed from logits stays on the
    # device the logits come from (with a device map, the last module's).
    device = input_device(model)
    upper = UpperForward(model, arch, layer)
    generator = torch.Generator().manual_seed(config.seed)

    pairs, trained, first_subject = training_pairs(items, config.framings, config.pairs,
                                                   group_swap, seed=config.seed,
                                                   augment=config.augment_targets)
    pair_ids = [(scorer.encode(s), scorer.encode(a)) for s, a, _ in pairs]
    n_plain = len(items)  # the first len(items) pairs are the items themselves (for SS checks)
    checked_ids = [*(ids for p in pair_ids[:n_plain] for ids in p),
                   *(scorer.encode(s) for i in [*validation, *monitor]
                     for s in (i.stereo, i.anti))]
    n_checked = n_plain + len(validation)  # pairs the checks choose by; then the monitor's
    group_texts = [*retention_sentences, *neutral_sentences(i.target for i in items)]
    for ids in [*(s for p in pair_ids for s in p)]:
        if len(ids) < 2:
            raise FairstampError("a bias sentence has no tokens to score")
    pair_sents = _Sentences([s for p in pair_ids for s in p])  # 2i: stereo, 2i+1: anti
    if config.subject_score == "suffix" and first_subject < len(pairs):
        pair_sents.start, trained = _suffix_starts(pair_ids, first_subject, trained)
    short_texts = [*group_texts, *generic_sentences]
    kl_sets = [
        _KLSet(_Sentences([_kl_ids(scorer, t) for t in short_texts]), config.batch_kl,
               generic=torch.tensor([False] * len(group_texts) + [True] * len(generic_sentences))),
        _KLSet(_Sentences([_kl_ids(scorer, t) for t in generic_passages]), config.batch_passages,
               generic=torch.ones(len(generic_passages), dtype=torch.bool)),
    ]
    delta = config.counterfactual_delta(items, group_swap)
    counterfactual = _counterfactual_set(scorer, items, group_swap, config) if delta else None
    budget = scorer.max_batch_tokens  # positions per pass, as the Scorer sizes its logits
    # The SS checks score the edited items with this scorer as `eval` does (packed rows),
    # replaying the lower layers from the first check on.
    if config.reuse_lower and layer and scorer.arch is not None:
        scorer.lower_cache = LowerLayerCache(model, arch, layer)
    if config.reuse_lower:
        for sents in (pair_sents, *(k.sents for k in kl_sets),
                      *([counterfactual.sents] if counterfactual else [])):
            sents.hidden = _capture(upper, sents.ids, scorer.pad_token_id, device, budget)
    vocab = None
    if config.train_vocab == "seen" or (config.train_vocab == "auto"
                                        and upper.vocab_size() > SEEN_VOCAB_ABOVE):
        vocab = _seen_vocabulary(upper, [pair_sents, *(k.sents for k in kl_sets),
                                         *([counterfactual.sents] if counterfactual else [])],
                                 config.kl_top_k, scorer.pad_token_id, device, budget)
    if counterfactual is not None:
        counterfactual.restrict(vocab, upper.vocab_size())
        if config.counterfactual_target == "mixture":
            with upper.restricted(vocab), torch.no_grad():
                counterfactual.anchor(upper, scorer.pad_token_id, device, config.batch_pairs)
    with upper.restricted(vocab):
        if config.keep_mean_weight:
            with torch.no_grad():
                pair_sents.original = _scores(upper, pair_sents, range(len(pair_sents.ids)),
                                              scorer.pad_token_id, device, budget)
        for kl_set in kl_sets:
            kl_set.targets = _kl_targets(upper, kl_set.sents, config.kl_top_k,
                                         scorer.pad_token_id, device, budget)

    trainable = make()
    params, optimizer = trainable.params, trainable.optimizer
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        result = TrainRun(setup_seconds=time.perf_counter() - setup_start,
                          counterfactual_weight=delta,
                          vocab_size=len(vocab) if vocab is not None else upper.vocab_size(),
                          validation_targets=sorted({i.target for i in validation}),
                          validation_items=len(validation),
                          step_limit=config.step_limit(n_plain))
        max_steps = result.step_limit
        log.info("training %s at layer %d on %d items (%d pairs with framings), %d "
                 "retention/group sentences, %d generic sentences and %d passages",
                 trainable.what, layer, len(items), len(pairs), len(group_texts),
                 len(generic_sentences), len(generic_passages))
        schedule = _cosine(optimizer, max_steps, config.lr_final)
        type_of = {item.id: item.bias_type for item in items}
        pair_types = [type_of[p[2]] for p in pairs]  # the lean is weighed per bias type
        if config.balance_types:
            types = [pair_types[k] for k in trained]
            pair_order = _Balanced([[trained[k] for k, t in enumerate(types) if t == b]
                                    for b in dict.fromkeys(types)], generator)
        else:
            pair_order = _Cycler(len(trained), generator, trained)
        for kl_set in kl_sets:
            kl_set.order = _Cycler(len(kl_set.sents.ids), generator)
        if counterfactual is not None:
            counterfactual.order = _Cycler(len(counterfactual.sents.ids) // 2, generator)
        check_every = config.check_interval(n_plain)
        start = time.perf_counter()
        gap_history: list[float] = []
        best: tuple[tuple[float, float], int, list[torch.Tensor]] | None = None
        bar = progress_enabled(progress)
        with progress_bar(max_steps, trainable.description, progress) as advance:
            for step in range(1, max_steps + 1):
                chosen = pair_order.take(config.batch_pairs)
                for kl_set in kl_sets:
                    kl_set.chosen = kl_set.order.take(kl_set.batch) if kl_set.order else []
                with upper.restricted(vocab):
                    loss, terms = _loss(upper, pair_sents, chosen, kl_sets, config,
                                        scorer.pad_token_id, device, budget,
                                        [pair_types[i] for i in chosen])
                    prefixes: list[int] = []
                    if counterfactual is not None:
                        prefixes = counterfactual.order.take(config.batch_pairs)
                        l_c = _counterfactual_loss(upper, counterfactual, prefixes,
                                                   scorer.pad_token_id, device)
                        loss = loss + delta * l_c
                        terms = {**terms, "loss": float(loss.detach()),
                                 counterfactual.term: float(l_c.detach())}
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at step {step} (terms: {terms}); lower "
                        f"--lr or the loss weights. No {trainable.kept} was kept.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if trainable.after_step is not None:
                    with torch.no_grad():
                        trainable.after_step()
                result.steps = step
                result.tokens += _step_tokens(pair_sents, chosen, kl_sets, counterfactual,
                                              prefixes)
                status = None
                if step % check_every == 0 or step == max_steps:
                    checked = time.perf_counter()
                    gaps = _check_gaps(scorer, checked_ids)
                    result.check_seconds += time.perf_counter() - checked
                    ss, le = _ss_and_loss(gaps[:n_plain])
                    record = {"step": step, "ss": ss, "bias_loss_all": le, **terms,
                              "seconds": time.perf_counter() - start}
                    chosen_by = ss, le
                    if validation:
                        chosen_by = _ss_and_loss(gaps[n_plain:n_checked])
                        record.update(validation_ss=chosen_by[0],
                                      validation_bias_loss=chosen_by[1])
                    if monitor:
                        record.update(zip(("monitor_ss", "monitor_bias_loss"),
                                          _ss_and_loss(gaps[n_checked:])))
                        record["monitor_gap"] = float(gaps[n_checked:].mean())
                    result.history.append(record)
                    gap_history.append(le)
                    key = kept_check_key(*chosen_by, config)
                    if best is None or key < best[0]:
                        best = (key, step, [p.detach().clone() for p in params])
                    status = (f"SS {ss:.1f}  "
                              + (f"validation SS {chosen_by[0]:.1f}  " if validation else "")
                              + f"bias {terms['bias_loss']:.3f}  "
                              f"retention KL {terms['retention_kl']:.4f}  "
                              f"generic KL {terms['generic_kl']:.4f}")
                    # Without a progress bar (CI, nohup, a log file) each check is a log line.
                    (log.debug if bar else log.info)("step %d/%d: %s", step, max_steps,
                                                     status)
                    if should_stop(step, ss, gap_history, config):
                        result.stopped = "converged"
                        advance(max_steps - step + 1, status=status)
                        break
                advance(status=status)
            else:
                result.stopped = "max_steps"
        if config.keep_best and best is not None and best[1] != result.steps:
            with torch.no_grad():
                for p, kept in zip(params, best[2]):
                    p.copy_(kept)
        result.best_step = best[1] if config.keep_best and best is not None else result.steps
    except BaseException:
        trainable.undo()
        raise
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    result.seconds = time.perf_counter() - start
    log.info("%s trained: %d steps in %.1f s (%s)", trainable.what, result.steps, result.seconds,
             result.stopped)
    return result


def _step_tokens(pairs: _Sentences, chosen: Sequence[int], kl_sets: Sequence[_KLSet],
                 counterfactual: _Counterfactual | None, prefixes: Sequence[int]) -> int:
    """Tokens one step ran through the layers above the edit: the chosen pairs' two sentences,
    the KL sentences and passages drawn, and L_c's prefix pairs."""
    rows = [j for i in chosen for j in (2 * i, 2 * i + 1)]
    n = sum(len(pairs.ids[j]) for j in rows)
    n += sum(len(k.sents.ids[i]) for k in kl_sets for i in k.chosen)
    if counterfactual is not None:
        n += sum(len(counterfactual.sents.ids[j]) for i in prefixes for j in (2 * i, 2 * i + 1))
    return n


def _suffix_starts(pair_ids: Sequence[tuple[list[int], list[int]]], first_subject: int,
                   trained: list[int]) -> tuple[list[int], list[int]]:
    """Each sentence's first scored token: 1 for the pairs before `first_subject`, the start of
    the pair's common token suffix for the subject-swap pairs after it; and the trained pairs
    less the subject pairs without a common suffix (nothing after the swapped words)."""
    starts, empty = [], set()
    for k, (a, b) in enumerate(pair_ids):
        common = _common_suffix(a, b) if k >= first_subject else 0
        if k >= first_subject and not common:
            empty.add(k)
        starts += [len(a) - common, len(b) - common] if common else [1, 1]
    if empty:
        log.info("%d subject-swap pairs end with their group word and are not trained on "
                 "(subject_score='suffix')", len(empty))
    return starts, [k for k in trained if k not in empty]


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two sentences end with in common, never their first token (the
    start-of-text token where the tokenizer adds one)."""
    common, limit = 0, min(len(a), len(b)) - 1
    while common < limit and a[-1 - common] == b[-1 - common]:
        common += 1
    return common


def _seen_vocabulary(upper: UpperForward, sets: Sequence[_Sentences], k: int, pad, device,
                     budget: int) -> Vocabulary:
    """Every token of the sentences plus the model's `k` most likely tokens at each of their
    positions (one pass over the whole vocabulary)."""
    seen = {t for sents in sets for ids in sents.ids for t in ids}
    for sents in sets:
        targets = _kl_targets(upper, sents, k, pad, device, budget)
        if targets is not None:
            seen.update(targets["idx"].unique().tolist())
    vocab = Vocabulary.of(seen, upper.vocab_size(), device)
    log.info("training vocabulary: %d of %d tokens (the training text's and the original "
             "model's top %d at every trained position)", len(vocab), upper.vocab_size(), k)
    return vocab


def kept_check_key(ss: float, gap: float, config: LoopSettings) -> tuple[float, float]:
    """Keep-best's order of checks (lowest first): SS's distance from 50 beyond
    `ss_tolerance`, then the mean |gap|."""
    return max(abs(ss - 50.0) - config.ss_tolerance, 0.0), gap


def should_stop(step: int, ss: float, gap_history: Sequence[float],
                config: LoopSettings) -> bool:
    """The early stop after the check at `step`: from `min_steps` on, SS within `ss_tolerance`
    of 50 and the mean |gap| (`gap_history`, one per check so far) no longer falling by
    `flat_tolerance`."""
    if step < config.min_steps or abs(ss - 50.0) > config.ss_tolerance or len(gap_history) < 2:
        return False
    previous, current = gap_history[-2], gap_history[-1]
    return previous - current <= config.flat_tolerance * max(previous, 1e-12)


def _cosine(optimizer: torch.optim.Optimizer, steps: int,
            final: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its value at step 1 down to `final` times that at step `steps`."""

    def factor(done: int) -> float:
        progress = min(done / max(steps - 1, 1), 1.0)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Cycler:
    """Indices in seeded random order, epoch after epoch."""

    def __init__(self, n: int, generator: torch.Generator,
                 values: Sequence[int] | None = None) -> None:
        self.n, self.generator, self.queue = n, generator, []
        self.values = values  # what position i stands for (None: i itself)

    def take(self, k: int) -> list[int]:
        k = min(k, self.n)
        while len(self.queue) < k:
            self.queue.extend(torch.randperm(self.n, generator=self.generator).tolist())
        out, self.queue = self.queue[:k], self.queue[k:]
        return out if self.values is None else [self.values[i] for i in out]


class _Balanced:
    """Indices drawn evenly across groups (the pairs of each bias type), each group in its own
    seeded order; the remainder of an uneven split goes to the groups in turn. One group draws
    exactly what `_Cycler` over its indices draws."""

    def __init__(self, groups: Sequence[Sequence[int]], generator: torch.Generator) -> None:
        self.groups = [list(g) for g in groups]
        self.cyclers = [_Cycler(len(g), generator) for g in self.groups]
        self.turn = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        n = len(self.groups)
        for j in range(n):
            g = (self.turn + j) % n
            share = k // n + (1 if j < k % n else 0)
            out.extend(self.groups[g][i] for i in self.cyclers[g].take(share))
        self.turn = (self.turn + k) % n
        return out


def _capture(upper: UpperForward, ids: list[list[int]], pad: int, device,
             budget: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    for rows in length_batches([len(x) for x in ids], budget):
        batch = Batch.of([ids[i] for i in rows], pad, device)
        hidden = upper.capture(batch)
        for r, i in enumerate(rows):
            out[i] = hidden[r, : batch.lengths[r]].clone()
    return out


def _stack(hidden: list[torch.Tensor] | None, chosen: Sequence[int], width: int):
    if hidden is None:
        return None
    first = hidden[chosen[0]]
    out = first.new_zeros((len(chosen), width, first.shape[-1]))
    for row, i in enumerate(chosen):
        out[row, : hidden[i].shape[0]] = hidden[i]
    return out


def _positions(lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, targets' column) of every position that predicts a scored token."""
    rows = torch.cat([torch.full((n - 1,), r) for r, n in enumerate(lengths)])
    cols = torch.cat([torch.arange(0, n - 1) for n in lengths])
    return rows, cols, cols + 1


def _token_logprobs(upper: UpperForward, ids: list[list[int]], hidden, chosen: Sequence[int],
                    pad, device, budget: int, max_size: int | None = None, *,
                    full: bool = True):
    """Log-probs of every scored token of the chosen sentences, the full log-softmax rows (for
    KL), the index into `chosen` of each position's sentence, and the order in which the chosen
    sentences were run (passes of similar lengths, `length_batches`; each sentence's positions
    are consecutive and in order). `full=False` skips keeping the log-softmax rows."""
    token, rows, logprobs, order = [], [], [], []
    for part in length_batches([len(ids[i]) for i in chosen], budget, max_size):
        sub = [chosen[j] for j in part]
        batch = Batch.of([ids[i] for i in sub], pad, device)
        r, cols, nxt = (t.to(device) for t in _positions(batch.lengths))
        logits = upper.logits(batch, _stack(hidden, sub, batch.ids.shape[1]), r, cols).float()
        lp = torch.log_softmax(logits, dim=-1)
        target = batch.ids[r, nxt]
        if upper.vocab is not None:  # restricted: its index in the subset (always in it)
            target = upper.vocab.index.to(target.device)[target]
        token.append(lp.gather(1, target.to(lp.device).unsqueeze(1)).squeeze(1))
        rows.append(torch.as_tensor(part, device=lp.device)[r.to(lp.device)])
        if full:
            logprobs.append(lp)
        order.extend(part)
    return torch.cat(token), torch.cat(rows), torch.cat(logprobs) if full else None, order


def _scores(upper: UpperForward, sents: _Sentences, chosen: Sequence[int], pad, device,
            budget: int, max_size: int | None = None) -> torch.Tensor:
    """The chosen sentences' scores (per-token mean log-probability, as the Scorer's), in order."""
    token, rows, _, order = _token_logprobs(upper, sents.ids, sents.hidden, chosen, pad, device,
                                            budget, max_size, full=False)
    n = len(chosen)
    if sents.start is not None:  # only the tokens from each sentence's start on
        index = torch.cat([torch.arange(1, len(sents.ids[chosen[j]])) for j in order])
        first = torch.tensor([sents.start[chosen[j]] for j in range(n)])
        keep = (index >= first[rows.cpu()]).to(token.device)
        token, rows = token[keep], rows[keep]
    sums = torch.zeros(n, dtype=token.dtype, device=token.device).index_add(0, rows, token)
    return sums / torch.bincount(rows, minlength=n).to(token.dtype)


@torch.no_grad()
def _kl_targets(upper, sents: _Sentences, k: int, pad, device, budget: int):
    """Top-k log-probs of the original model at every KL position, plus the rest's log-mass."""
    if not sents.ids:
        return None
    top_k: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(sents.ids)  # type: ignore
    for rows in length_batches([len(x) for x in sents.ids], budget):
        _, _, logprobs, order = _token_logprobs(upper, sents.ids, sents.hidden, rows, pad,
                                                device, budget)
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        at = 0
        for j in order:  # each sentence's positions are consecutive
            n = len(sents.ids[rows[j]]) - 1
            top_k[rows[j]] = (top.indices[at: at + n], top.values[at: at + n])
            at += n
    lp = torch.cat([v for _, v in top_k])
    return {"idx": torch.cat([i for i, _ in top_k]), "lp": lp, "rest": _log_rest(lp),
            "offsets": _offsets(sents.ids)}


def _offsets(ids: list[list[int]]) -> list[int]:
    out, total = [], 0
    for seq in ids:
        out.append(total)
        total += len(seq) - 1
    return out


def _log_rest(top_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(top)), clamped away from log 0."""
    mass = torch.logsumexp(top_logprobs, dim=-1).clamp(max=-1e-6)
    return torch.log(-torch.expm1(mass))


def _target_rows(targets, chosen: Sequence[int], ids: list[list[int]]):
    """Gather the cached top-k targets of the chosen sentences' positions."""
    picks = torch.cat([torch.arange(targets["offsets"][i], targets["offsets"][i] + len(ids[i]) - 1)
                       for i in chosen]).to(targets["idx"].device)
    return targets["idx"][picks], targets["lp"][picks], targets["rest"][picks]


def _kl(logprobs: torch.Tensor, idx: torch.Tensor, lp: torch.Tensor,
        rest: torch.Tensor) -> torch.Tensor:
    """KL(original ‖ stamped) per position over the top-k tokens plus the rest bucket."""
    q = logprobs.gather(1, idx)
    q_rest = _log_rest(q)
    p = lp.exp()
    return (p * (lp - q)).sum(-1) + rest.exp() * (rest - q_rest)


def _loss(upper, pairs: _Sentences, chosen, kl_sets: Sequence[_KLSet], config: LoopSettings,
          pad, device, budget: int, types: Sequence[str]):
    sent_rows = [j for i in chosen for j in (2 * i, 2 * i + 1)]
    means = _scores(upper, pairs, sent_rows, pad, device, budget, config.pass_size)
    gaps = pair_gaps(means)
    l_e = bias_loss(gaps)
    # λ·lean: each bias type's |mean gap|, weighted by its pairs (only when λ > 0, so that the
    # default's graph is the one without it)
    l_sign = batch_lean(gaps, types) if config.sign_weight else None
    l_m = l_e.new_zeros(())
    if config.keep_mean_weight:
        original = pairs.original[sent_rows].to(means.device)
        drift = (pair_sums(means) - pair_sums(original)) / 2
        if config.lm_smooth > 0:  # Huber: quadratic within lm_smooth of the original
            l_m = torch.nn.functional.smooth_l1_loss(drift, torch.zeros_like(drift),
                                                     beta=config.lm_smooth)
        else:
            l_m = drift.abs().mean()
    group: list[torch.Tensor] = []
    generic: list[torch.Tensor] = []
    for kl_set in kl_sets:
        if not kl_set.chosen:
            continue
        per_position, is_generic = _kl_positions(upper, kl_set, pad, device, budget,
                                                 config.pass_size)
        if (~is_generic).any():
            group.append(per_position[~is_generic].mean())
        if is_generic.any():
            generic.append(per_position[is_generic].mean())
    zero = l_e.new_zeros(())
    l_s1 = torch.stack(group).mean() if group else zero
    l_s2 = torch.stack(generic).mean() if generic else zero
    loss = (l_e + config.retention_weight * l_s1 + config.generic_weight * l_s2
            + config.keep_mean_weight * l_m)
    if l_sign is not None:
        loss = loss + config.sign_weight * l_sign
    terms = {"loss": float(loss.detach()), "bias_loss": float(l_e.detach()),
             **({"batch_lean": float(l_sign.detach())} if l_sign is not None else {}),
             **({"keep_mean": float(l_m.detach())} if config.keep_mean_weight else {}),
             "retention_kl": float(l_s1.detach()), "generic_kl": float(l_s2.detach())}
    return loss, terms


def _kl_positions(upper, kl_set: _KLSet, pad, device, budget: int,
                  max_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(original ‖ stamped) at every position of the set's chosen sentences, and whether each
    position belongs to a generic text."""
    sents, chosen = kl_set.sents, kl_set.chosen
    _, rows, logprobs, order = _token_logprobs(upper, sents.ids, sents.hidden, chosen, pad,
                                               device, budget, max_size)
    idx, lp, rest = _target_rows(kl_set.targets, [chosen[j] for j in order], sents.ids)
    out = logprobs.device  # the logits' device; `rows` is there too
    per_position = _kl(logprobs, idx.to(out), lp.to(out), rest.to(out))
    return per_position, kl_set.generic[chosen].to(out)[rows]


@dataclass
class _Counterfactual:
    """L_c's pairs (2i: the words before an item's attribute, or with `counterfactual_span=
    "sentence"` one of the item's sentences; 2i+1: the same words about a counterfactual group),
    the positions compared in each (`cols`, aligned between a pair's two texts: the last one of
    a prefix; every position from the last swapped token of a sentence to the one before its
    end), and the vocabulary its distributions are compared over: every token but the first
    tokens of the group words, whose choice legitimately follows the group."""

    sents: _Sentences
    cols: list[list[int]]
    group_tokens: torch.Tensor
    keep: torch.Tensor | None = None  # column indices of the compared tokens in the logits
    mixture: torch.Tensor | None = None  # the "mixture" target: log ½(p₀ + q₀), per pair
    order: _Cycler | None = None

    def restrict(self, vocab: Vocabulary | None, size: int) -> None:
        columns = torch.ones(size if vocab is None else len(vocab), dtype=torch.bool)
        at = self.group_tokens if vocab is None else vocab.index.cpu()[self.group_tokens]
        columns[at[at >= 0]] = False
        self.keep = columns.nonzero().squeeze(1)

    @property
    def term(self) -> str:
        """The training history's name for L_c: a JS divergence, or KLs from the anchor."""
        return "counterfactual_js" if self.mixture is None else "counterfactual_kl"

    def anchor(self, upper: UpperForward, pad, device, chunk: int) -> None:
        """Record the original model's mixture of each pair's two distributions (the
        "mixture" target), `chunk` pairs per pass."""
        pairs = range(len(self.sents.ids) // 2)
        self.mixture = torch.cat([
            _mixture(*_prefix_logprobs(upper, self, pairs[k: k + chunk], pad, device)).cpu()
            for k in range(0, len(pairs), chunk)])


def _counterfactual_set(scorer: Scorer, items: Sequence[BiasItem],
                        swap: AttributeSwap | None, config: LoopSettings) -> _Counterfactual:
    items = config.counterfactual_items(items)
    prefixes = counterfactual_prefixes(items, swap, seed=config.seed)
    if not prefixes:
        raise FairstampError(f"counterfactual_weight > 0, but no edited item"
                             f"{config.counterfactual_scope} names a group word before its "
                             "attribute (nothing to swap)")
    templated = (template_prefixes(swap) if config.counterfactual_templates
                 and any(i.bias_type == "gender" for i in items) else [])
    if config.counterfactual_templates and not templated:
        log.warning("counterfactual_templates: no gender items with gender words to swap, so no "
                    "templated prefixes")
    if templated:
        log.info("L_c: %d templated prefix pairs about gender words", len(templated))
    if config.counterfactual_substitutes:
        substituted = substituted_prefixes(items, swap, config.counterfactual_substitutes,
                                           seed=config.seed)
        if substituted:
            log.info("L_c: %d prefix pairs about other gender nouns", len(substituted))
        else:
            log.warning("counterfactual_substitutes: no gender item names a gender noun before "
                        "its attribute, so no substituted prefixes")
        prefixes = [*prefixes, *substituted]
    rows, cols = [], []
    if config.counterfactual_span == "sentence":  # a sentence pair holds its prefix's position
        sentences = subject_pairs(items, swap, seed=config.seed)
        for a, b in ([scorer.encode(t) for t in p[:2]] for p in sentences):
            if common := _common_suffix(a, b):  # the positions predicting the common suffix
                rows += [a, b]
                cols += [list(range(len(x) - 1 - common, len(x) - 1)) for x in (a, b)]
        log.info("L_c: %d sentence pairs (of %d) with words after the swapped group words, %d "
                 "positions", len(rows) // 2, len(sentences), sum(map(len, cols[0::2])))
        prefixes = []
    for a, b in ([scorer.encode(t) for t in p[:2]] for p in [*prefixes, *templated]):
        rows += [a, b]
        cols += [[len(a) - 1], [len(b) - 1]]
    words = {w for word in swap.table for w in (word, word[:1].upper() + word[1:])}
    first = {ids[0] for w in words for text in (w, " " + w)
             if (ids := scorer.tokenizer(text, add_special_tokens=False)["input_ids"])}
    log.info("L_c: %d pairs, %d group-word tokens left out of the compared vocabulary",
             len(rows) // 2, len(first))
    return _Counterfactual(_Sentences(rows), cols, torch.tensor(sorted(first), dtype=torch.long))


def _prefix_logprobs(upper: UpperForward, cf: _Counterfactual, chosen: Sequence[int], pad,
                     device) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities over the compared vocabulary at each compared position of
    the chosen pairs' texts and at the same position of their counterfactuals (two [positions,
    compared tokens] tensors, pair by pair)."""
    rows = [j for i in chosen for j in (2 * i, 2 * i + 1)]
    batch = Batch.of([cf.sents.ids[i] for i in rows], pad, device)
    # A text's position, then the same position of its counterfactual, pair after pair.
    at, cols = [], []
    for k, i in enumerate(chosen):
        for own, other in zip(cf.cols[2 * i], cf.cols[2 * i + 1]):
            at += [2 * k, 2 * k + 1]
            cols += [own, other]
    on = batch.ids.device
    logits = upper.logits(batch, _stack(cf.sents.hidden, rows, batch.ids.shape[1]),
                          torch.tensor(at, device=on), torch.tensor(cols, device=on))
    lp = torch.log_softmax(logits.float()[:, cf.keep.to(logits.device)], dim=-1)
    return lp[0::2], lp[1::2]


def _mixture(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """log ½(P + Q) from log P and log Q."""
    return torch.logaddexp(p, q) - math.log(2.0)


def _counterfactual_loss(upper: UpperForward, cf: _Counterfactual, chosen: Sequence[int], pad,
                         device) -> torch.Tensor:
    """L_c over the chosen pairs, over every token but the group words': the mean
    Jensen-Shannon divergence between the two next-token distributions (a sentence pair's mean
    over its positions, so that every pair weighs the same); with an anchor (the "mixture"
    target), the mean of KL(m₀ ‖ p) and KL(m₀ ‖ q), m₀ the original's mixture."""
    p, q = _prefix_logprobs(upper, cf, chosen, pad, device)
    if cf.mixture is None:
        m = _mixture(p, q)
        js = 0.5 * ((p.exp() * (p - m)).sum(-1) + (q.exp() * (q - m)).sum(-1))
        if len(js) == len(chosen):  # one position a pair: the plain mean (the weighted sum
            return js.mean()        # below equals it, rounded otherwise)
        counts = [len(cf.cols[2 * i]) for i in chosen]
        weights = torch.tensor([1.0 / (n * len(chosen)) for n in counts for _ in range(n)],
                               device=js.device)
        return (js * weights).sum()
    m0 = cf.mixture[list(chosen)].to(p.device)
    return 0.5 * ((m0.exp() * (2 * m0 - p - q)).sum(-1)).mean()


def validation_split(items: Sequence[BiasItem], fraction: float, *, seed: int = 0
                     ) -> tuple[list[BiasItem], list[BiasItem]]:
    """(trained, validation), each in input order: round(`fraction` × n) of each bias type's n
    targets (at least one where n ≥ 2; whole targets move together) set aside, the first in an
    order hashed from the seed and the target, salted apart from the run's held-out split
    (`data.splits`). With nothing set aside the edited items choose the kept check (a log line
    says so)."""
    if not fraction:
        return list(items), []
    aside: set[tuple[str, str]] = set()
    for keys in targets_by_type(items).values():
        if len(keys) >= 2:
            order = hashed_order(keys, seed=seed, salt="validation")
            aside.update(order[:min(len(keys) - 1, max(1, round(fraction * len(keys))))])
    trained = [i for i in items if target_key(i) not in aside]
    validation = [i for i in items if target_key(i) in aside]
    if not validation:
        log.warning("validation_fraction %.2f: no bias type has two targets to set one aside; "
                    "the edited items' own SS chooses the kept check", fraction)
    else:
        log.info("%d items of %d targets set aside (validation_fraction %.2f) to choose the "
                 "kept check: %s", len(validation), len(aside), fraction,
                 ", ".join(sorted(t for _, t in aside)))
    return trained, validation


def _check_gaps(checker: Scorer, ids: Sequence[list[int]]) -> np.ndarray:
    """Each pair's gap (no framings; `ids` alternate stereo and anti), scored by the Scorer
    exactly as `eval` scores them; a lower-layer cache records on the first call and replays
    after."""
    spans = checker.token_logprobs(ids, [1] * len(ids), description="SS check")
    if checker.lower_cache is not None:
        checker.lower_cache.replay()
    return pair_gaps(np.array([span.mean for span in spans]))


def _ss_and_loss(gaps: np.ndarray) -> tuple[float, float]:
    """SS (%) and mean |gap| of pairs' gaps."""
    return stereotype_percent(gaps), float(bias_loss(gaps))


__all__ = ["COUNTERFACTUAL_TARGETS", "SEEN_VOCAB_ABOVE", "TRAIN_VOCABS", "LoopSettings",
           "TrainRun", "Trainable", "TrainingDiverged", "kept_check_key", "should_stop",
           "train_at_layer", "validation_split"]
