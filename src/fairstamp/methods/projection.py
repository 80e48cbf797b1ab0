"""INLP and SentenceDebias: a linear projection of the final hidden state, as bias-bench adapts
both to GPT-2.

Both methods read sentence representations — the final hidden state (the input of the unembedding,
after the final norm: what GPT-2's `last_hidden_state` is in bias-bench) mean-pooled over the
sentence's tokens — of WikiText-2 *valid* sentences that mention attribute words of the edited bias
types (bias-bench's `bias_attribute_words.json`), find bias directions V (orthonormal rows), and
edit the model with a forward pre-hook on the unembedding that maps every position's hidden state
h to h − (h Vᵀ) V = h P, P = I − VᵀV. Nothing in the model's weights changes.

- INLP (Ravfogel et al. 2020): iteratively train a linear classifier of the attribute class
  (gender: male / female / neutral; race, religion: bias / neutral) and project the data onto the
  intersection of the classifiers' nullspaces; V spans all the classifiers' rowspaces
  (bias-bench's `compute_projection_matrix` + nullspace_projection's `get_debiasing_projection`).
- SentenceDebias (Liang et al. 2020): counterfactual copies of each sentence (an attribute word
  swapped to the other members of its tuple), L2-normalised representations, each group's mean
  subtracted, PCA: V = the first k principal directions (bias-bench's `compute_*_subspace`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fairstamp.data.attribute_words import ATTRIBUTE_WORDS, load_attribute_words
from fairstamp.data.locations import WIKITEXT2_VALID
from fairstamp.data.wikitext import wikitext_sentences as read_wikitext
from fairstamp.errors import DataError, FairstampError
from fairstamp.methods.base import EditContext, HookEdit, Method
from fairstamp.models.archspec import get_module
from fairstamp.scoring.batching import pad_batch
from fairstamp.scoring.scorer import Scorer
from fairstamp.utils.devices import execution_device, input_device
from fairstamp.utils.hooks import Capture, hidden_arg, replace_hidden_arg
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

# -- text ------------------------------------------------------------------------------------------


def wikitext_sentences(path: str | Path, *, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Every sentence of a WikiText-2 file (headings dropped), lightly detokenised, in file order,
    with `min_words`..`max_words` words after detokenising.

    Sentences with `<unk>` are kept (as `<unk>`): two thirds of WikiText-2 valid has one, and the
    attribute words are rare enough that dropping them would leave e.g. 16 religion sentences.
    """
    what = "WikiText-2 valid, the text INLP / SentenceDebias read"
    return [text for _, text in read_wikitext(path, what)
            if min_words <= len(text.split()) <= max_words]


def attribute_words(data_root: Path | None, bias_types: Sequence[str]
                    ) -> dict[str, list[list[str]]]:
    """The attribute word tuples of each bias type that has some (lower-cased); other types are
    skipped with a warning. Raises when none of `bias_types` has attribute words."""
    if data_root is None:
        raise FairstampError("INLP / SentenceDebias need the public data folder (context.data_root)"
                             " for WikiText-2 and bias_attribute_words.json")
    return load_attribute_words(Path(data_root) / ATTRIBUTE_WORDS, bias_types,
                                needed_by="INLP / SentenceDebias", skip_missing=True)


def _word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Whole words, case-insensitive (a word is not part of a longer word or contraction)."""
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<![\w'])(?:{alternatives})(?![\w'])", re.IGNORECASE)


def _word_index(text: str, start: int) -> int:
    """Index, in `text.split()`, of the word that contains character `start`."""
    before = text[:start].split()
    glued = start > 0 and not text[start - 1].isspace()
    return len(before) - (1 if glued else 0)


def _match_case(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def inlp_dataset(sentences: Sequence[str], tuples: list[list[str]], max_sentences: int,
                 rng: random.Random) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, class names) for INLP's classifiers, as bias-bench's `load_inlp_data`.

    Two-member tuples (gender) give one class per member position (male, female); longer tuples
    (race, religion) one "bias" class; sentences without any of the words are "neutral".
    Sentences mixing positions are skipped. Each sentence is clipped at a random word after its
    last attribute word (neutral ones after a random word from the fourth on), so the classifiers
    see prefixes as a causal LM does. At most `max_sentences` per class, and no more neutral
    sentences than the largest attribute class.
    """
    positional = len(tuples[0]) == 2
    names = ["male", "female"] if positional else ["bias"]
    position = {}
    for group in tuples:
        for i, word in enumerate(group):
            position.setdefault(word, i if positional else 0)
    pattern = _word_pattern(list(position))
    order = list(sentences)
    rng.shuffle(order)
    by_class: list[list[str]] = [[] for _ in names]
    neutral: list[str] = []
    for sentence in order:
        words = sentence.split()
        matches = list(pattern.finditer(sentence))
        if not matches:
            if len(neutral) < max_sentences:
                neutral.append(" ".join(words[: rng.randint(4, len(words))]))
            continue
        classes = {position[m.group(0).lower()] for m in matches}
        if len(classes) > 1:
            continue
        (label,) = classes
        if len(by_class[label]) >= max_sentences:
            continue
        last = _word_index(sentence, matches[-1].start())
        by_class[label].append(" ".join(words[: rng.randint(last, len(words) - 1) + 1]))
    if any(not c for c in by_class):
        empty = [n for n, c in zip(names, by_class) if not c]
        raise DataError(f"no WikiText-2 sentence for the INLP class(es) {', '.join(empty)}")
    neutral = neutral[: max(len(c) for c in by_class)]
    texts = [t for c in by_class for t in c] + neutral
    labels = [i for i, c in enumerate(by_class) for _ in c] + [len(names)] * len(neutral)
    return texts, labels, [*names, "neutral"]


def counterfactual_groups(sentences: Sequence[str], tuples: list[list[str]], max_sentences: int,
                          rng: random.Random) -> list[list[str]]:
    """SentenceDebias's examples, as bias-bench's `_gender/_race_augment_func`: for every
    sentence and every tuple one of whose words it contains, the sentence with that word (each
    occurrence) replaced by each member of the tuple, in tuple order. Case is kept ("He" →
    "She"). Sentences are taken in an order shuffled with `rng`, at most `max_sentences` of them."""
    pattern = _word_pattern([w for group in tuples for w in group])
    order = [s for s in sentences if pattern.search(s)]
    rng.shuffle(order)
    groups = []
    for sentence in order[:max_sentences]:
        for group in tuples:
            for word in group:
                own = _word_pattern([word])
                if not own.search(sentence):
                    continue
                groups.append([own.sub(lambda m, new=new: _match_case(m.group(0), new), sentence)
                               for new in group])
    return groups


# -- representations ------------------------------------------------------------------------------



@torch.no_grad()
def sentence_representations(loaded: Any, texts: Sequence[str], *, batch_size: int = 32,
                             progress: bool | None = None,
                             description: str = "representations") -> torch.Tensor:
    """[N, hidden] float64: each text's final hidden state (the unembedding's input), mean-pooled
    over its own tokens. The text is read after the Scorer's start token (as it is scored) but
    that position is not pooled."""
    scorer = Scorer.from_loaded(loaded)
    skip = 1 if scorer.prefix_token_id is not None else 0
    sequences = [scorer.encode(t) for t in texts]
    for text, seq in zip(texts, sequences):
        if len(seq) <= skip:
            raise FairstampError(f"{text!r} has no tokens")
    model, unembed = loaded.model, loaded.arch.unembed
    device = input_device(model)
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: (-len(sequences[i]), i))
    with progress_bar(len(texts), description, progress) as advance:
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            ids, mask, positions = pad_batch([sequences[i] for i in batch], scorer.pad_token_id)
            with Capture(model, inputs=[unembed], stop=True) as seen:
                model(input_ids=ids.to(device), attention_mask=mask.to(device),
                      position_ids=positions.to(device), use_cache=False)
            if unembed not in seen.inputs:
                raise FairstampError(f"the unembedding {unembed!r} was not called")
            hidden = seen.inputs[unembed].double().cpu()
            for row, i in enumerate(batch):
                out[i] = hidden[row, skip : len(sequences[i])].mean(dim=0)
            advance(len(batch))
    return torch.stack(out)  # type: ignore[arg-type]


# -- linear algebra -------------------------------------------------------------------------------


def orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (as rows) of the span of `rows` [m, d]; rows of (near) zero norm are
    ignored, the others normalised first so that a small classifier still counts (the
    scale-free union of rowspace projections that nullspace_projection sums)."""
    norms = rows.norm(dim=1, keepdim=True)
    keep = norms.squeeze(1) > torch.finfo(rows.dtype).eps * 1e3
    if not bool(keep.any()):
        return rows.new_zeros((0, rows.shape[1]))
    unit = rows[keep] / norms[keep]
    _, s, vh = torch.linalg.svd(unit, full_matrices=False)
    tol = s.max() * max(unit.shape) * torch.finfo(unit.dtype).eps
    return vh[s > tol]


def projection_matrix(directions: torch.Tensor) -> torch.Tensor:
    """P = I − VᵀV: the projection onto the orthogonal complement of the directions' span."""
    d = directions.shape[1]
    return torch.eye(d, dtype=directions.dtype) - directions.T @ directions


def project_out(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """x P for orthonormal `directions` (rows), without forming P."""
    if directions.shape[0] == 0:
        return x
    return x - (x @ directions.T) @ directions


def _sign_fixed(rows: torch.Tensor) -> torch.Tensor:
    """Each row with its largest-magnitude entry positive (an SVD's signs are arbitrary)."""
    index = rows.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(rows.gather(1, index))
    return rows * torch.where(signs == 0, torch.ones_like(signs), signs)


def fit_linear_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, kind: str = "svm",
                          c: float = 1.0, steps: int = 100) -> torch.Tensor:
    """Weights [rows, d] of a linear classifier without intercept, trained full-batch with L-BFGS
    from zero (deterministic).

    kind="svm": scikit-learn's LinearSVC as bias-bench configures it (squared hinge, L2, C,
    one-vs-rest; one row for two classes); kind="logistic": multinomial logistic regression
    (rows centred, so they span K − 1 directions; one row for two classes).
    """
    x = x.double()
    binary = n_classes == 2
    rows = 1 if binary else n_classes
    w = torch.zeros(rows, x.shape[1], dtype=torch.float64, requires_grad=True)
    if kind == "svm":
        target = (y == 1).double().unsqueeze(1) if binary else \
            torch.nn.functional.one_hot(y, n_classes).double()
        sign = 2 * target - 1
    elif kind != "logistic":
        raise FairstampError(f"unknown INLP classifier {kind!r}; use 'svm' or 'logistic'")
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scores = x @ w.T
        if kind == "svm":
            data = torch.clamp(1 - sign * scores, min=0).pow(2).sum()
        elif binary:
            data = torch.nn.functional.binary_cross_entropy_with_logits(
                scores.squeeze(1), (y == 1).double(), reduction="sum")
        else:
            data = torch.nn.functional.cross_entropy(scores, y, reduction="sum")
        loss = 0.5 * w.pow(2).sum() + c * data
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = w.detach()
    if kind == "logistic" and not binary:
        weights = weights - weights.mean(dim=0, keepdim=True)
    return weights


def classifier_accuracy(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    scores = x.double() @ weights.T
    predicted = (scores.squeeze(1) > 0).long() if weights.shape[0] == 1 else scores.argmax(dim=1)
    return float((predicted == y).double().mean())


@dataclass
class InlpResult:
    directions: torch.Tensor  # [r, d] orthonormal: the union of the classifiers' rowspaces
    classifiers: torch.Tensor  # [m, d] every kept classifier's weight rows, in order
    history: list[dict[str, Any]]
    stopped: str


def inlp(x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor, y_dev: torch.Tensor,
         n_classes: int, *, n_iterations: int = 80, min_accuracy: float = 0.0,
         kind: str = "svm", c: float = 1.0, steps: int = 100,
         advance: Callable[..., None] | None = None) -> InlpResult:
    """Iterative nullspace projection (nullspace_projection's `get_debiasing_projection` with
    is_autoregressive=True, no dropout, no by-class): train a classifier on the data projected
    onto the intersection of the previous classifiers' nullspaces, stop when one's dev accuracy
    is below `min_accuracy` (training is deterministic, so a retry would find the same
    classifier) or the directions fill the space."""
    x_train, x_dev = x_train.double(), x_dev.double()
    dim = x_train.shape[1]
    directions = x_train.new_zeros((0, dim))
    kept: list[torch.Tensor] = []
    history: list[dict[str, Any]] = []
    stopped = "n_iterations"
    for iteration in range(n_iterations):
        weights = fit_linear_classifier(project_out(x_train, directions), y_train, n_classes,
                                        kind=kind, c=c, steps=steps)
        accuracy = classifier_accuracy(weights, project_out(x_dev, directions), y_dev)
        history.append({"iteration": iteration + 1, "dev_accuracy": accuracy})
        if advance is not None:
            advance(1, status=f"dev acc {accuracy:.3f}")
        if accuracy < min_accuracy:
            stopped = "min_accuracy"
            break
        kept.append(weights)
        # As nullspace_projection: recompute the intersection of all nullspaces from every
        # classifier so far (Ben-Israel), not by chaining projections.
        directions = orthonormal_rows(torch.cat(kept))
        history[-1]["directions"] = int(directions.shape[0])
        if directions.shape[0] >= dim:
            stopped = "full_rank"
            break
    classifiers = torch.cat(kept) if kept else x_train.new_zeros((0, dim))
    return InlpResult(directions, classifiers, history, stopped)


def bias_subspace(groups: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, list[float]]:
    """SentenceDebias's subspace from representations [n, K, d] of n counterfactual groups:
    normalise each, subtract each group's mean, PCA → (k directions [k, d], explained variance
    ratios)."""
    if groups.shape[0] == 0:
        raise FairstampError("SentenceDebias: no counterfactual examples")
    unit = groups.double() / groups.double().norm(dim=-1, keepdim=True)
    centred = (unit - unit.mean(dim=1, keepdim=True)).reshape(-1, groups.shape[-1])
    centred = centred - centred.mean(dim=0, keepdim=True)  # PCA centres (already ~0 here)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    ratios = (s[:k] ** 2 / (s**2).sum()).tolist()
    return _sign_fixed(vh[:k]), [float(r) for r in ratios]


# -- the edit -------------------------------------------------------------------------------------


class ProjectionEdit(HookEdit):
    """A projection of the final hidden state by a forward pre-hook on the unembedding.

    `parameters_changed` counts the entries of the directions it stores (r × hidden): the
    projection P = I − VᵀV is determined by them, and nothing of the model changes.
    """

    def __init__(self, method: str, handles: Sequence[Any], directions: torch.Tensor,
                 extra: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        directions = directions.float().cpu()
        super().__init__(method, handles, {"directions": directions, **extra},
                         added=int(directions.numel()), info=info)
        self.directions = directions

    loader = "fairstamp.methods.projection:ProjectionEdit"

    def projection(self) -> torch.Tensor:
        """P = I − VᵀV (float64, hidden × hidden)."""
        return projection_matrix(self.directions.double())

    @classmethod
    def from_saved(cls, folder: Any, loaded: Any, summary: dict[str, Any],
                   tensors: dict[str, torch.Tensor]) -> ProjectionEdit:
        """The saved directions' projection hooked onto `loaded` again."""
        if "directions" not in tensors:
            raise FairstampError(f"{folder}: the saved {summary.get('method')} edit has no "
                                 "directions")
        directions = tensors["directions"]
        extra = {k: v for k, v in tensors.items() if k != "directions"}
        info = {k: v for k, v in summary.items()
                if k not in ("method", "parameters_changed", "loader")}
        return cls(summary["method"], [attach_projection(loaded, directions)], directions, extra,
                   info)


def attach_projection(loaded: Any, directions: torch.Tensor) -> Any:
    """Register the pre-hook h → h − (h Vᵀ) V on the unembedding; returns its handle."""
    module = get_module(loaded.model, loaded.arch.unembed)
    device = execution_device(module)
    v = directions.float().to(device)

    def project(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = hidden_arg(args, kwargs)
        projected = project_out(h.float(), v.to(h.device)).to(h.dtype)
        return replace_hidden_arg(args, kwargs, projected)

    return module.register_forward_pre_hook(project, with_kwargs=True)


def _type_seed(seed: int, bias_type: str) -> random.Random:
    return random.Random(f"{seed}:{bias_type}")


def _split(n: int, dev_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_dev = max(1, round(n * dev_fraction))
    return order[n_dev:], order[:n_dev]


@dataclass
class InlpConfig:
    """INLP's knobs (defaults: bias-bench's for GPT-2)."""

    n_iterations: int = 80  # classifiers trained (bias-bench: 80)
    min_accuracy: float = 0.0  # stop when a classifier's dev accuracy is below (bias-bench: 0)
    classifier: str = "svm"  # "svm" (LinearSVC, as bias-bench) or "logistic"
    c: float = 1.0  # inverse L2 strength (sklearn's C; bias-bench: LinearSVC default 1)
    classifier_steps: int = 100  # L-BFGS iterations per classifier
    max_sentences: int = 2000  # per class (bias-bench: 10000 of Wikipedia per class)
    dev_fraction: float = 0.3  # held out to measure each classifier's accuracy
    batch_size: int = 32  # sentences per forward pass when reading representations


class InlpMethod(Method):
    name = "inlp"
    config_class = InlpConfig
    description = ("projects the final hidden state onto the nullspace of iteratively trained "
                   "attribute classifiers (a hook; weights unchanged)")

    def fit(self, context: EditContext) -> ProjectionEdit:
        cfg: InlpConfig = self.config
        if cfg.n_iterations < 1:
            raise FairstampError("inlp.n_iterations must be at least 1")
        start = time.perf_counter()
        tuples = attribute_words(context.data_root, context.bias_types)
        sentences = wikitext_sentences(Path(context.data_root) / WIKITEXT2_VALID)
        per_type: dict[str, Any] = {}
        directions, classifiers = [], []
        for bias_type, groups in tuples.items():
            texts, labels, names = inlp_dataset(sentences, groups, cfg.max_sentences,
                                                _type_seed(context.seed, bias_type))
            x = sentence_representations(context.loaded, texts, batch_size=cfg.batch_size,
                                         progress=context.progress,
                                         description=f"INLP {bias_type} sentences")
            y = torch.tensor(labels)
            train, dev = _split(len(labels), cfg.dev_fraction, context.seed)
            with progress_bar(cfg.n_iterations, f"INLP {bias_type}", context.progress) as adv:
                result = inlp(x[train], y[train], x[dev], y[dev], len(names),
                              n_iterations=cfg.n_iterations, min_accuracy=cfg.min_accuracy,
                              kind=cfg.classifier, c=cfg.c, steps=cfg.classifier_steps,
                              advance=adv)
            counts = torch.bincount(y, minlength=len(names)).tolist()
            majority = float(torch.bincount(y[dev], minlength=len(names)).max()) / len(dev)
            per_type[bias_type] = {
                "classes": dict(zip(names, counts)), "train": len(train), "dev": len(dev),
                "majority_dev_accuracy": majority, "directions": int(result.directions.shape[0]),
                "stopped": result.stopped, "history": result.history}
            log.info("INLP %s: %d directions, dev accuracy %.3f → %.3f (majority %.3f)",
                     bias_type, result.directions.shape[0], result.history[0]["dev_accuracy"],
                     result.history[-1]["dev_accuracy"], majority)
            directions.append(result.directions)
            classifiers.append(result.classifiers)
        v = orthonormal_rows(torch.cat(directions))
        info = {"config": self.config_dict(), "seed": context.seed, "bias_types": per_type,
                "directions": int(v.shape[0]), "hidden_size": int(v.shape[1]),
                "hook": context.loaded.arch.unembed, "seconds": time.perf_counter() - start}
        handle = attach_projection(context.loaded, v)
        return ProjectionEdit(self.name, [handle], v,
                              {"classifiers": torch.cat(classifiers).float()}, info)


@dataclass
class SentenceDebiasConfig:
    """SentenceDebias's knobs (defaults: bias-bench's)."""

    n_components: int = 1  # principal directions removed per bias type (bias-bench: 1)
    max_sentences: int = 2000  # source sentences per bias type (each gives ≥ 1 example)
    batch_size: int = 32


class SentenceDebiasMethod(Method):
    name = "sentence_debias"
    config_class = SentenceDebiasConfig
    description = ("removes the principal bias direction(s) of counterfactual sentence pairs "
                   "from the final hidden state (a hook; weights unchanged)")

    def fit(self, context: EditContext) -> ProjectionEdit:
        cfg: SentenceDebiasConfig = self.config
        if cfg.n_components < 1:
            raise FairstampError("sentence_debias.n_components must be at least 1")
        start = time.perf_counter()
        tuples = attribute_words(context.data_root, context.bias_types)
        sentences = wikitext_sentences(Path(context.data_root) / WIKITEXT2_VALID)
        per_type: dict[str, Any] = {}
        directions = []
        for bias_type, groups in tuples.items():
            examples = counterfactual_groups(sentences, groups, cfg.max_sentences,
                                             _type_seed(context.seed, bias_type))
            if not examples:
                raise DataError(f"no WikiText-2 sentence mentions a {bias_type} attribute word")
            size = len(examples[0])
            flat = [t for group in examples for t in group]
            reps = sentence_representations(context.loaded, flat, batch_size=cfg.batch_size,
                                            progress=context.progress,
                                            description=f"SentenceDebias {bias_type}")
            v, ratios = bias_subspace(reps.reshape(len(examples), size, -1), cfg.n_components)
            per_type[bias_type] = {"examples": len(examples), "group_size": size,
                                   "explained_variance_ratio": ratios}
            log.info("SentenceDebias %s: %d examples, explained variance %s", bias_type,
                     len(examples), ", ".join(f"{r:.3f}" for r in ratios))
            directions.append(v)
        v = orthonormal_rows(torch.cat(directions))
        info = {"config": self.config_dict(), "seed": context.seed, "bias_types": per_type,
                "directions": int(v.shape[0]), "hidden_size": int(v.shape[1]),
                "hook": context.loaded.arch.unembed, "seconds": time.perf_counter() - start}
        handle = attach_projection(context.loaded, v)
        return ProjectionEdit(self.name, [handle], v, {}, info)
