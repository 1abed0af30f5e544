"""Keras weights in convdsl's layouts: channels-last kernels made PyTorch's, names by layer.

Keras keeps kernels with the spatial axes first and the channels last, whatever the layer's
``data_format``; convdsl keeps PyTorch's layouts. Per layer class (``r`` spatial axes):

=====================================  ==========================  ==============================
Keras layer (arrays in order)          Keras shape                 convdsl parameter
=====================================  ==========================  ==============================
``Conv1D/2D/3D`` kernel, bias          ``[*K, C/groups, O]``       ``weight [O, C/groups, *K]``
``DepthwiseConv1D/2D`` kernel, bias    ``[*K, C, m]``              ``weight [C*m, 1, *K]``
``Conv1D/2D/3DTranspose`` kernel, bias ``[*K, O, C]``              ``weight [C, O, *K]``
``BatchNormalization`` gamma, beta,    ``[C]`` each                ``weight``, ``bias``,
moving_mean, moving_variance                                       ``running_mean``, ``running_var``
``Dense`` kernel, bias                 ``[F, O]``                  ``weight [O, F]``
=====================================  ==========================  ==============================

Biases are ``[O]`` in both. A depthwise output channel ``c*m + j`` is filter ``j`` of input
channel ``c`` in both, so its kernel is a reshape. What the arrays cannot carry is written in
the ``.conv`` text: Keras's batch-norm epsilon is 1e-3 (``batch_norm(x, eps=0.001)``; convdsl's
default is PyTorch's 1e-5), and Keras ``padding="same"`` is convdsl's ``padding=same``.

>>> import numpy as np
>>> w = keras_weights({"c1": ("Conv2D", [np.zeros((3, 3, 4, 8)), np.zeros(8)])})
>>> {name: a.shape for name, a in w.items()}
{'c1.weight': (8, 4, 3, 3), 'c1.bias': (8,)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from convdsl.diagnostics import DiagnosticSink, error

Arrays = Sequence[Any] | Mapping[str, Any]
"""A layer's arrays: in ``get_weights()`` order, or by Keras weight name (``kernel``)."""

KerasLayers = Mapping[str, tuple[str, Arrays]]
"""``{layer name: (Keras class name, arrays)}``."""


def _channels_first(kernel: np.ndarray) -> np.ndarray:
    """``[*K, a, b]`` -> ``[b, a, *K]``: a convolution's kernel and a transposed one's alike."""
    r = kernel.ndim - 2
    return kernel.transpose(r + 1, r, *range(r))


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    """``[*K, C, m]`` -> ``[C*m, 1, *K]``; channel ``c*m + j`` stays filter ``j`` of ``c``."""
    r = kernel.ndim - 2
    flat = kernel.reshape(*kernel.shape[:r], -1)
    return np.moveaxis(flat, -1, 0)[:, None]


def _dense(kernel: np.ndarray) -> np.ndarray:
    return kernel.T


class _Kind:
    def __init__(
        self, roles: tuple[str, ...], rank: int, kernel: Callable[[np.ndarray], np.ndarray] | None
    ) -> None:
        self.roles = roles  # Keras weight names, in get_weights() order
        self.rank = rank  # the kernel's rank
        self.kernel = kernel  # None: no kernel (batch norm)


_CONV = ("kernel", "bias")
KINDS: dict[str, _Kind] = {
    **{f"Conv{r}D": _Kind(_CONV, r + 2, _channels_first) for r in (1, 2, 3)},
    **{f"Conv{r}DTranspose": _Kind(_CONV, r + 2, _channels_first) for r in (1, 2, 3)},
    **{f"DepthwiseConv{r}D": _Kind(_CONV, r + 2, _depthwise) for r in (1, 2)},
    "Dense": _Kind(_CONV, 2, _dense),
    "BatchNormalization": _Kind(("gamma", "beta", "moving_mean", "moving_variance"), 1, None),
}
"""The Keras layer classes converted, by class name."""

BATCH_NORM_ROLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def convert_layer(kind: str, arrays: Arrays, layer: str) -> dict[str, np.ndarray]:
    """One Keras layer's arrays as convdsl parameters ``{layer}.weight``, ``{layer}.bias``...

    >>> import numpy as np
    >>> w = convert_layer("DepthwiseConv2D", [np.zeros((3, 3, 4, 2))], "dw")
    >>> w["dw.weight"].shape
    (8, 1, 3, 3)
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise error(
            f"Keras layer '{layer}': the class {kind} is not converted",
            hint=f"convdsl converts {', '.join(KINDS)}",
        )
    by_role = _by_role(kind, spec, arrays, layer)
    if spec.kernel is None:
        return _batch_norm(by_role, layer)
    kernel = by_role.pop("kernel", None)
    if kernel is None:
        raise error(f"Keras layer '{layer}' ({kind}): no kernel")
    if kernel.ndim != spec.rank:
        raise error(
            f"Keras layer '{layer}' ({kind}): the kernel has shape {list(kernel.shape)}, "
            f"expected {spec.rank} dims"
        )
    out = {f"{layer}.weight": np.ascontiguousarray(spec.kernel(kernel))}
    if "bias" in by_role:
        out[f"{layer}.bias"] = np.ascontiguousarray(by_role["bias"])
    return out


def _by_role(kind: str, spec: _Kind, arrays: Arrays, layer: str) -> dict[str, np.ndarray]:
    if isinstance(arrays, Mapping):
        named = {str(role).split("/")[-1].split(":")[0]: value for role, value in arrays.items()}
        unknown = sorted(set(named) - set(spec.roles))
        if unknown:
            raise error(
                f"Keras layer '{layer}' ({kind}): unknown weight {', '.join(unknown)}",
                hint=f"a {kind} has {', '.join(spec.roles)}",
            )
        return {role: np.asarray(value) for role, value in named.items()}
    listed = list(arrays)
    full = len(spec.roles)
    plain = 1 if kind != "BatchNormalization" else full  # a conv without bias has its kernel
    if len(listed) not in (plain, full):
        raise error(
            f"Keras layer '{layer}' ({kind}): {len(listed)} arrays, expected "
            f"{' or '.join(map(str, sorted({plain, full})))} ({', '.join(spec.roles)})",
            hint="for a layer with center=False or scale=False, pass the arrays by name "
            "({'gamma': ..., 'moving_mean': ...}) or the Keras model itself",
        )
    return {role: np.asarray(value) for role, value in zip(spec.roles, listed, strict=False)}


def _batch_norm(by_role: dict[str, np.ndarray], layer: str) -> dict[str, np.ndarray]:
    for needed in ("moving_mean", "moving_variance"):
        if needed not in by_role:
            raise error(f"Keras layer '{layer}' (BatchNormalization): no {needed}")
    channels = by_role["moving_mean"].shape
    dtype = by_role["moving_mean"].dtype
    by_role.setdefault("gamma", np.ones(channels, dtype))  # scale=False
    by_role.setdefault("beta", np.zeros(channels, dtype))  # center=False
    return {
        f"{layer}.{BATCH_NORM_ROLES[role]}": np.ascontiguousarray(a) for role, a in by_role.items()
    }


def keras_weights(model: Any, names: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """convdsl parameters from a Keras model (or layer), or from ``{layer name: (class name,
    arrays)}`` with the arrays as ``layer.get_weights()`` lists them. Each layer with weights
    becomes the convdsl layer ``names[layer]`` (its own name when ``names`` lacks it); layers
    without weights (activations, pools, ``Flatten``) are skipped.

    >>> import numpy as np
    >>> layers = {"dense_1": ("Dense", [np.zeros((64, 10)), np.zeros(10)])}
    >>> sorted(keras_weights(layers, names={"dense_1": "fc"}))
    ['fc.bias', 'fc.weight']
    """
    layers = dict(model) if isinstance(model, Mapping) else _model_layers(model)
    sink = DiagnosticSink()
    out: dict[str, np.ndarray] = {}
    for keras_name, (kind, arrays) in layers.items():
        layer = (names or {}).get(keras_name, keras_name)
        for name, array in convert_layer(kind, arrays, layer).items():
            if name in out:
                sink.error(f"two Keras layers give the parameter '{name}'")
            out[name] = array
    sink.raise_if_errors()
    return out


def _model_layers(model: Any) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """Every layer with weights of a Keras model, nested models opened, by name."""
    if not hasattr(model, "get_weights") or not hasattr(model, "weights"):
        raise error(
            f"expected a Keras model or layer, or {{name: (class, arrays)}}; found "
            f"{type(model).__name__}"
        )
    found: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    inner = getattr(model, "layers", None)
    if inner:
        for layer in inner:
            found.update(_model_layers(layer))
        return found
    arrays = model.get_weights()
    if arrays:
        variables = [str(v.name) for v in model.weights]
        found[model.name] = (_kind(model), dict(zip(variables, arrays, strict=True)))
    return found


def _kind(layer: Any) -> str:
    """The Keras class ``layer`` is, or derives from, that ``KINDS`` knows (else its own)."""
    for cls in type(layer).__mro__:
        if cls.__name__ in KINDS:
            return cls.__name__
    return type(layer).__name__
