"""Recipes for derived parameters, and their evaluation when weights are bound.

A folding pass rewrites a node to read a ``DerivedParam`` (see ``ir.graph``) instead of a
declared one; the recipe, named here, computes its array from declared parameters once, when a
backend binds weights. Weights files therefore never depend on the optimization level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Attrs, Graph

Recipe = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]


def _bn_scale(gamma: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    return gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)


def bn_fold_weight(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    """``w * gamma / sqrt(var + eps)`` along the weight's output-channel axis.

    Sources: weight, bn weight (gamma), bn running_var. ``attrs["axis"]`` is 0 for conv
    weights ``[O, C/g, *K]`` and 1 for (ungrouped) transposed conv weights ``[C, O, *K]``.
    """
    weight, gamma, var = arrays
    scale = _bn_scale(gamma, var, attrs["eps"])
    shape = [1] * weight.ndim
    shape[attrs["axis"]] = -1
    return (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)


def bn_fold_bias(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    """``(b - mean) * gamma / sqrt(var + eps) + beta``; ``b`` is 0 when the conv had no bias.

    Sources: [conv bias,] bn weight, bn bias, bn running_mean, bn running_var.
    """
    if attrs["has_bias"]:
        bias, gamma, beta, mean, var = arrays
    else:
        gamma, beta, mean, var = arrays
        bias = np.zeros_like(mean)
    scale = _bn_scale(gamma, var, attrs["eps"])
    folded = (bias.astype(np.float64) - mean) * scale + beta
    return folded.astype(gamma.dtype)


RECIPES: dict[str, Recipe] = {
    "bn_fold_weight": bn_fold_weight,
    "bn_fold_bias": bn_fold_bias,
}


def materialize(graph: Graph, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The declared weights plus every derived parameter of ``graph``, computed in order
    (a recipe may read another derived parameter made before it)."""
    arrays = dict(weights)
    for derived in graph.derived.values():
        recipe = RECIPES.get(derived.recipe)
        if recipe is None:
            raise InternalError(f"no recipe '{derived.recipe}' for parameter {derived.name}")
        array = recipe([arrays[s] for s in derived.sources], derived.attrs)
        if array.shape != derived.shape:
            raise InternalError(
                f"recipe {derived.recipe} made {derived.name} of shape {array.shape}, "
                f"expected {derived.shape}"
            )
        arrays[derived.name] = np.ascontiguousarray(array)
    return arrays
