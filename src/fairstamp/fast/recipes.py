"""FAST's measured per-model defaults: where a model's cross-validation by target (docs/fast.md)
found a stamp layer and a batch lean (λ) that generalise better than the general defaults (the
`two-thirds` layer rule, λ = 0), `fairstamp debias` and `fairstamp bench` use them: the layer
unless `--layer` or `--layer-rule` names another, λ unless `--sign-weight` does; every run
records what it used.

A recipe is matched by the model's name as loaded: the offline alias or the Hub id it was made
from. A local copy of the same weights gets the general defaults (pass the options yourself).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRecipe:
    names: tuple[str, ...]  # the alias and Hub ids it applies to
    layer: int  # where the stamp sits (after this layer's MLP)
    sign_weight: float  # λ, the batch's lean (`LoopSettings.sign_weight`)


RECIPES: tuple[ModelRecipe, ...] = (
    # docs/fast.md, "The batch's lean": 5-fold CV by target, gender on two seeds (28% of the way
    # against layer 12's 16%) and race (77% against 48%); religion's three targets do worse.
    ModelRecipe(names=("gemma-3-270m", "google/gemma-3-270m"), layer=9, sign_weight=1.0),
)


def recipe_for(model_name: str) -> ModelRecipe | None:
    """The measured recipe of the model loaded as `model_name`, or None."""
    return next((r for r in RECIPES if model_name in r.names), None)


def sign_weight_for(given: float | None, model_name: str) -> tuple[float, str]:
    """(λ, where it came from): the given one, else the model's measured one, else 0."""
    if given is not None:
        return given, "given"
    recipe = recipe_for(model_name)
    if recipe is None:
        return 0.0, "default"
    return recipe.sign_weight, f"measured for {model_name}"


__all__ = ["RECIPES", "ModelRecipe", "recipe_for", "sign_weight_for"]
