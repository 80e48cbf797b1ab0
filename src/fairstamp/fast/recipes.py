"""FAST's measured defaults: where cross-validation by target or a held-out split (docs/fast.md)
found settings that generalise better than the general defaults (the `two-thirds` layer rule,
λ = 0, L_c at the loop's automatic δ), `fairstamp debias` and `fairstamp bench` use them: the
layer unless `--layer` or `--layer-rule` names another, λ unless `--sign-weight` does, δ unless
`--counterfactual-weight` or another L_c option does; every run records what it used.

Two kinds: a model's recipe, matched by the model's name as loaded (the offline alias or the
Hub id it was made from; a local copy of the same weights gets the general defaults: pass the
options yourself), and the recipe of an edit of several bias types at once. A model's recipe
wins over the edit's where both set λ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRecipe:
    names: tuple[str, ...]  # the alias and Hub ids it applies to
    layer: int  # where the stamp sits (after this layer's MLP)
    sign_weight: float  # λ, the batch's lean (`LoopSettings.sign_weight`)


@dataclass(frozen=True)
class EditRecipe:
    sign_weight: float  # λ
    counterfactual_weight: float  # δ, L_c's weight


RECIPES: tuple[ModelRecipe, ...] = (
    # docs/fast.md, "The batch's lean": 5-fold CV by target, gender on two seeds (28% of the way
    # against layer 12's 16%) and race (77% against 48%); religion's three targets do worse.
    ModelRecipe(names=("gemma-3-270m", "google/gemma-3-270m"), layer=9, sign_weight=1.0),
)

# docs/fast.md, "smollm2-135m, gender + race + religion": one stamp for 1,160 items of three
# types lands within 50 ± 2 on two seeds with the lean and without L_c, moving unseen targets
# 43% and 45% of the way, where L_c at δ = 3 without the lean keeps 88.5% of `known_1000` and
# moves them 17% (L_c's nationality swaps cost the facts).
SEVERAL_TYPES = EditRecipe(sign_weight=1.0, counterfactual_weight=0.0)
SEVERAL_TYPES_SOURCE = "measured for several bias types"


def recipe_for(model_name: str) -> ModelRecipe | None:
    """The measured recipe of the model loaded as `model_name`, or None."""
    return next((r for r in RECIPES if model_name in r.names), None)


def several_types(bias_types: Iterable[str]) -> bool:
    """Whether an edit of items of these bias types spans more than one."""
    return len(set(bias_types)) > 1


def sign_weight_for(given: float | None, model_name: str,
                    bias_types: Iterable[str] = ()) -> tuple[float, str]:
    """(λ, where it came from): the given one, else the model's measured one, else the measured
    one of an edit of several bias types (`bias_types`: the edited items'), else 0."""
    if given is not None:
        return given, "given"
    recipe = recipe_for(model_name)
    if recipe is not None:
        return recipe.sign_weight, f"measured for {model_name}"
    if several_types(bias_types):
        return SEVERAL_TYPES.sign_weight, SEVERAL_TYPES_SOURCE
    return 0.0, "default"


def counterfactual_weight_for(given: float | None, bias_types: Iterable[str],
                              asked: bool = False) -> tuple[float | None, str]:
    """(δ, where it came from): the given one, else 0 for an edit of several bias types unless
    another option of L_c was `asked` for (`LoopSettings.counterfactual_asked`), else None: the
    loop's automatic δ (`LoopSettings.counterfactual_delta`)."""
    if given is not None:
        return given, "given"
    if several_types(bias_types) and not asked:
        return SEVERAL_TYPES.counterfactual_weight, SEVERAL_TYPES_SOURCE
    return None, "default"


__all__ = ["RECIPES", "SEVERAL_TYPES", "EditRecipe", "ModelRecipe", "counterfactual_weight_for",
           "recipe_for", "several_types", "sign_weight_for"]
