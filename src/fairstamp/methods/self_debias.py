"""Self-Debias (Schick et al. 2021), as timoschick/self-debiasing and bias-bench run it on GPT-2:
a decoding-time method that changes no weight.

For every position the model's next-token distribution p(w | x) is compared with the
distributions it gives after each debiasing prefix ("The following text discriminates against
people because of their gender: " + x); tokens the prefixes make *more* likely are scaled down:

    p̃(w | x) ∝ p(w | x) · max(α(Δ(w)), ε),   Δ(w) = p(w | x) − max_y p(w | prefix_y + x),
    α(Δ) = 1 if Δ ≥ 0 else exp(λ · Δ)

with the code's defaults λ (decay_constant) = 50 and ε = 0.01 (the smallest factor a probability
is multiplied by, as `SelfDebiasingLogitsProcessor._apply_decay_mask` floors the decay mask).

`SelfDebiasingLM` wraps the model and behaves like it for fairstamp's scoring: called as the Scorer
calls a model (right-padded input ids that start with the start-of-text token, explicit position
ids), it returns the log-probabilities log p̃ as `.logits`. Each debiasing prefix goes right after
the start token, so "<bos> prefix x" is read with positions 0.. like "<bos> x".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from fairstamp.errors import FairstampError
from fairstamp.methods.base import EditContext, Method, WrapperEdit
from fairstamp.scoring.scorer import Scorer, max_positions

log = logging.getLogger(__name__)

_LEAD = "The following text discriminates against people because of their "
#: bias-bench's debiasing prefixes (stereoset.py `DEBIASING_PREFIXES`), by fairstamp bias type.
#: StereoSet's "race" uses bias-bench's "race-color" prompt; "profession" (not evaluated by
#: bias-bench) uses its "socioeconomic status/occupation" prompt.
DEBIASING_PREFIXES = {
    "gender": _LEAD + "gender: ",
    "race": _LEAD + "race/color: ",
    "race-color": _LEAD + "race/color: ",
    "religion": _LEAD + "religion: ",
    "profession": _LEAD + "socioeconomic status/occupation: ",
    "socioeconomic": _LEAD + "socioeconomic status/occupation: ",
    "sexual-orientation": _LEAD + "sexual orientiation: ",  # sic, as in the papers' code
    "age": _LEAD + "age: ",
    "nationality": _LEAD + "nationality: ",
    "disability": _LEAD + "disability: ",
    "physical-appearance": _LEAD + "physical appearance: ",
}

_UNSUPPORTED = ("past_key_values", "inputs_embeds", "labels", "logits_to_keep")


class SelfDebiasingLM(nn.Module):
    """A causal LM whose next-token log-probabilities are self-debiased.

    It shares the base model's submodules (so `parameters()`, `named_parameters()` and module
    paths are the base model's own) and passes every other attribute (`config`, `device`, ...)
    through to it. `forward` returns `CausalLMOutput(logits=log p̃)`; `generate` decodes greedily
    or by sampling, one full forward per new token (no cache), so generated text is debiased too.
    """

    def __init__(self, base: nn.Module, prefix_ids: Sequence[Sequence[int]], *,
                 start_token_id: int | None, pad_token_id: int, decay_constant: float = 50.0,
                 epsilon: float = 0.01) -> None:
        super().__init__()
        if not prefix_ids or any(len(p) == 0 for p in prefix_ids):
            raise FairstampError("Self-Debias needs at least one non-empty debiasing prefix")
        self.__dict__["base"] = base  # not registered: the submodules below are shared instead
        self._modules = base._modules  # type: ignore[assignment]
        self.prefix_ids = [list(map(int, p)) for p in prefix_ids]
        self.start_token_id = start_token_id
        self.pad_token_id = int(pad_token_id)
        self.decay_constant = float(decay_constant)
        self.epsilon = float(epsilon)
        self.training = base.training

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("base")
            if base is None:
                raise
            return getattr(base, name)

    def train(self, mode: bool = True) -> SelfDebiasingLM:
        self.__dict__["base"].train(mode)
        self.training = mode
        return self

    # -- scoring -----------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False,
                **kwargs: Any) -> CausalLMOutput:
        for name in _UNSUPPORTED:
            if kwargs.get(name) is not None:
                raise FairstampError(f"the Self-Debias wrapper does not support {name}")
        kwargs = {k: v for k, v in kwargs.items() if k not in _UNSUPPORTED}
        base = self.__dict__["base"]
        batch, width = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.long().sum(dim=1)
        arange = torch.arange(width, device=input_ids.device)
        valid = arange.unsqueeze(0) < lengths.unsqueeze(1)
        if not torch.equal(valid, attention_mask.bool()) or (
                position_ids is not None and not torch.equal(
                    position_ids, arange.unsqueeze(0).expand(batch, width))):
            raise FairstampError("the Self-Debias wrapper needs right-padded input with positions "
                                 "0, 1, ... (fairstamp's pad_batch convention)")
        logits = base(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False, **kwargs).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        biased = None
        for prefix in self.prefix_ids:
            p = self._prefixed_probs(base, input_ids, lengths, prefix, **kwargs)
            biased = p if biased is None else torch.maximum(biased, p)
        debiased = self.debias(logp, biased)
        return CausalLMOutput(logits=torch.where(valid.unsqueeze(-1), debiased, logp))

    def debias(self, logp: torch.Tensor, biased: torch.Tensor) -> torch.Tensor:
        """log p̃ from log p(w | x) and max_y p(w | prefix_y + x) (the paper's eq. 3, with the
        code's floor ε on the scaling factor), renormalised."""
        shift = torch.clamp(biased - logp.exp(), min=0)  # −Δ where Δ < 0, else 0
        log_alpha = -self.decay_constant * shift
        if self.epsilon > 0:
            log_alpha = torch.clamp(log_alpha, min=float(torch.log(torch.tensor(self.epsilon))))
        scaled = logp + log_alpha
        return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)

    def _prefixed_probs(self, base: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor,
                        prefix: list[int], **kwargs: Any) -> torch.Tensor:
        """p(· | prefix + x) aligned with the positions of x: [batch, width, vocab]."""
        batch, width = input_ids.shape
        n = len(prefix)
        ids = torch.full((batch, width + n), self.pad_token_id, dtype=input_ids.dtype,
                         device=input_ids.device)
        mask = torch.zeros((batch, width + n), dtype=torch.long, device=input_ids.device)
        head = torch.tensor(prefix, dtype=input_ids.dtype, device=input_ids.device)
        for row in range(batch):
            length = int(lengths[row])
            keep = 1 if (self.start_token_id is not None and length > 0
                         and int(input_ids[row, 0]) == self.start_token_id) else 0
            ids[row, :keep] = input_ids[row, :keep]
            ids[row, keep : keep + n] = head
            ids[row, keep + n : length + n] = input_ids[row, keep:length]
            mask[row, : length + n] = 1
        limit = max_positions(base)
        if limit is not None and int(lengths.max()) + n > limit:
            raise FairstampError(f"a sequence of {int(lengths.max())} tokens plus the {n}-token "
                                 f"debiasing prefix exceeds the model's {limit} positions")
        positions = torch.arange(width + n, device=input_ids.device).unsqueeze(0).expand(
            batch, width + n)
        logits = base(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=False, **kwargs).logits
        # Position t of x (t >= the start token) sits at t + n; the logits at t predict x[t + 1],
        # and so do those at t + n (for t = 0 that is the prefix's last token, read after <bos>).
        return torch.softmax(logits[:, n : n + width].float(), dim=-1)

    # -- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, do_sample: bool = False,
                 temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, pad_token_id: int | None = None,
                 eos_token_id: int | None = None, **_: Any) -> torch.Tensor:
        """Greedy or sampled continuation with self-debiased probabilities (a full forward per
        token). Inputs must be unpadded (equal lengths); the global torch RNG drives sampling."""
        if top_p is not None or top_k is not None:
            raise FairstampError("Self-Debias generation supports temperature only (no top-p/k)")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise FairstampError("Self-Debias generation needs unpadded prompts")
        if eos_token_id is None:
            eos_token_id = getattr(self.__dict__["base"].config, "eos_token_id", None)
        eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else
                  ([] if eos_token_id is None else [eos_token_id]))
        pad = self.pad_token_id if pad_token_id is None else int(pad_token_id)
        ids = input_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logp = self(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            if do_sample:
                probs = torch.softmax(logp / (temperature or 1.0), dim=-1)
                token = torch.multinomial(probs, 1).squeeze(1)
            else:
                token = logp.argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
            done |= torch.tensor([int(t) in eos for t in token], device=ids.device)
            if bool(done.all()):
                break
        return ids


@dataclass
class SelfDebiasConfig:
    """Self-Debias's knobs (defaults: the paper's code and bias-bench)."""

    decay_constant: float = 50.0  # λ
    epsilon: float = 0.01  # smallest factor a token's probability is multiplied by
    prefixes: tuple[str, ...] = ()  # debiasing prefixes; empty: bias-bench's, per bias type


class SelfDebiasMethod(Method):
    name = "self_debias"
    config_class = SelfDebiasConfig
    description = ("decoding-time: scales down tokens that a 'discriminates against' prefix "
                   "makes more likely (no weight changed)")

    def fit(self, context: EditContext) -> WrapperEdit:
        cfg: SelfDebiasConfig = self.config
        if cfg.decay_constant < 0 or not 0 <= cfg.epsilon <= 1:
            raise FairstampError("self_debias: decay_constant must be >= 0, epsilon in [0, 1]")
        prefixes = list(cfg.prefixes)
        if not prefixes:
            unknown = [t for t in context.bias_types if t not in DEBIASING_PREFIXES]
            if unknown:
                raise FairstampError(f"no Self-Debias prefix for {', '.join(unknown)}; known: "
                                     f"{', '.join(DEBIASING_PREFIXES)} (or pass prefixes=...)")
            prefixes = list(dict.fromkeys(DEBIASING_PREFIXES[t] for t in context.bias_types))
        loaded = context.loaded
        if isinstance(loaded.model, SelfDebiasingLM):
            raise FairstampError("the model is already wrapped by Self-Debias")
        scorer = Scorer.from_loaded(loaded)
        tokenizer = loaded.tokenizer
        prefix_ids = [list(tokenizer(p, add_special_tokens=False).input_ids) for p in prefixes]
        original = loaded.model
        loaded.model = SelfDebiasingLM(original, prefix_ids, start_token_id=scorer.prefix_token_id,
                                       pad_token_id=scorer.pad_token_id,
                                       decay_constant=cfg.decay_constant, epsilon=cfg.epsilon)
        info = {"config": self.config_dict(), "prefixes": prefixes,
                "prefix_tokens": [len(p) for p in prefix_ids], "bias_types": context.bias_types}
        return SelfDebiasEdit(self.name, original, info)


class SelfDebiasEdit(WrapperEdit):
    """The Self-Debias wrapper; it has no tensors: loading wraps the model again with the saved
    settings and prefixes."""

    loader = "fairstamp.methods.self_debias:SelfDebiasEdit"

    @classmethod
    def from_saved(cls, folder: Any, loaded: Any, summary: dict[str, Any],
                   tensors: dict[str, Any]) -> WrapperEdit:
        config = SelfDebiasConfig(**{**summary["config"],
                                     "prefixes": tuple(summary["prefixes"])})
        context = EditContext(loaded=loaded, items=[], bias_types=list(summary["bias_types"]),
                              layer=0)
        return SelfDebiasMethod(config).fit(context)
