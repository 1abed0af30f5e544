"""The classifier head's kernels: ``flatten`` and ``dense`` (``nn.Linear``)."""

from __future__ import annotations

import numpy as np


def flatten(x: np.ndarray) -> np.ndarray:
    """``[N, C, *S] -> [N, C*prod(S)]`` in C order (channels first), as ``torch.flatten(x, 1)``."""
    return x.reshape(x.shape[0], -1)


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``x @ weight.T + bias`` for ``x`` ``[N, F]``, ``weight`` ``[O, F]``, ``bias`` ``[O]``."""
    y = x @ weight.astype(x.dtype, copy=False).T
    if bias is not None:
        y = y + bias.astype(x.dtype, copy=False)
    return y
