"""The padding and output-size formulas, in one place.

Every stage that needs a window geometry (the shape checker, the NumPy interpreter, later
backends) calls these functions; none re-derives them. All sizes are per spatial axis.

Sizes may be symbolic (``convdsl.ir.symbolic``): the formulas use only ``+ - * //`` and
``symbolic.maximum``, never a branch on a size, so one formula serves fixed and symbolic sizes.

Notation: ``n`` input length, ``k`` kernel size, ``s`` stride, ``d`` dilation,
``before``/``after`` padding at the start/end of the axis. The *effective kernel* of a dilated
window is ``d * (k - 1) + 1``: dilation spaces the taps, it never inflates the weights.
"""

from __future__ import annotations

from fractions import Fraction

from convdsl.ir.symbolic import maximum, minimum
from convdsl.ir.types import Dim

Pads = tuple[tuple[int, int], ...]


def effective_kernel(k: int, d: int) -> int:
    """Extent covered by ``k`` taps spaced ``d`` apart."""
    return d * (k - 1) + 1


def conv_output_size(n: int, k: int, s: int, d: int, before: int, after: int) -> int:
    """Output length of a strided, dilated window over a padded axis (floor mode).

    ``floor((n + before + after - d*(k-1) - 1) / s) + 1``; may be < 1 when the effective kernel
    is larger than the padded input, which the shape checker reports.
    """
    return (n + before + after - effective_kernel(k, d)) // s + 1


def same_padding(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow/Keras ``same``: output ``ceil(n / s)``; an odd total puts the extra after.

    total = max((ceil(n/s) - 1) * s + d*(k-1) + 1 - n, 0); before = total // 2.
    """
    out = -(-n // s)
    total = maximum((out - 1) * s + effective_kernel(k, d) - n, 0)
    return total // 2, total - total // 2


def same_lower_padding(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """ONNX ``auto_pad=SAME_LOWER``: the total of ``same_padding``, the odd extra element at the
    start (``before = total - total // 2``)."""
    before, after = same_padding(n, k, s, d)
    return after, before


def causal_padding(k: int, d: int) -> tuple[int, int]:
    """1-D ``causal``: all ``d*(k-1)`` padding before, so output t sees inputs <= t only."""
    return effective_kernel(k, d) - 1, 0


def conv_transpose_full_size(n: int, k: int, s: int, d: int) -> int:
    """A transposed conv's output length before any crop: ``(n-1)*s + d*(k-1) + 1``."""
    return (n - 1) * s + effective_kernel(k, d)


def conv_transpose_output_size(
    n: int, k: int, s: int, d: int, before: int, after: int, output_padding: int
) -> int:
    """PyTorch ``ConvTranspose`` output length:
    ``(n-1)*s - before - after + d*(k-1) + 1 + output_padding``.

    ``before``/``after`` crop the full result; ``output_padding`` extends the end (positions past
    the full result hold only the bias).
    """
    return conv_transpose_full_size(n, k, s, d) - before - after + output_padding


def transpose_same_padding(n: int, k: int, s: int, d: int) -> tuple[int, int, int]:
    """Keras ``Conv2DTranspose(padding="same")``: output exactly ``n * s``.

    Returns ``(before, after, output_padding)``. The crop is ``max(d*(k-1) + 1 - s, 0)``, split
    with the extra after (the adjoint of ``same`` conv); when the effective kernel is shorter than
    the stride the missing tail is ``output_padding``.
    """
    ek = effective_kernel(k, d)
    total = max(ek - s, 0)
    before, after = total // 2, total - total // 2
    output_padding = n * s - conv_transpose_output_size(n, k, s, d, before, after, 0)
    return before, after, output_padding


def transpose_same_output_padding(
    n: int, k: int, s: int, d: int, output_padding: int
) -> tuple[int, int, int]:
    """Keras ``Conv2DTranspose(padding="same", output_padding=p)``: the output length is Keras'
    ``deconv_output_length`` with ``p`` given, ``(n-1)*s + ek - 2*(ek//2) + p`` (``ek`` the
    effective kernel), and output ``i`` is position ``i + before`` of the full result, where
    ``before = max(ek - ek%2 - p, 0) // 2`` (TensorFlow's gradient of a ``same`` convolution
    over an input of that length). Returns ``(before, after, extension)``: the crops of the
    full result and the tail past it (as ``output_padding``), one of ``after``, ``extension``
    being 0."""
    ek = effective_kernel(k, d)
    total = ek - ek % 2 - output_padding  # full length minus the output length
    crop = max(total, 0)
    before = crop // 2
    return before, crop - before, crop - total


def pool_output_size(
    n: int, k: int, s: int, d: int, before: int, after: int, ceil_mode: bool
) -> int:
    """Pooling output length; ``ceil_mode`` rounds up but, as in PyTorch, never starts a window
    entirely inside the end padding."""
    span = n + before + after - effective_kernel(k, d)
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    # Minus one when the last window would start at or past n + before: [a >= b] for ints
    # is min(max(a - b + 1, 0), 1).
    return out - minimum(maximum((out - 1) * s - (n + before) + 1, 0), 1)


def broadcast_size(a: Dim, b: Dim) -> Dim | None:
    """NumPy's broadcasting of one dim: equal sizes, or 1 against any size, give that size;
    anything else (two different sizes, a batch symbol against another size) None. A fixed 1
    is tested first, so a size expression against 1 broadcasts without a condition on it."""
    if isinstance(b, int) and b == 1:
        return a
    if isinstance(a, int) and a == 1:
        return b
    if a == b:  # the simpler form of two equal sizes: H rather than 4*(H//4)
        return a if len(str(a)) <= len(str(b)) else b
    return None


def resize_output_size(n: int, factor: Fraction) -> int:
    """``floor(n * factor)``, the output length of a resize by ``factor`` (PyTorch
    ``interpolate``, ONNX ``Resize``), computed exactly as ``n * p // q`` for ``factor = p/q``."""
    return n * factor.numerator // factor.denominator


def clamp(value: int, low: int, high: int) -> int:
    """``value`` moved into ``[low, high]``."""
    return minimum(maximum(value, low), high)


def slice_range(n: int, start: int | None, end: int | None, step: int) -> tuple[int, int]:
    """ONNX ``Slice`` on an axis of length ``n``: ``(first, count)``, the first index read and
    how many (``first + i*step`` for ``i < count``; ``count`` may be < 1: an empty slice).

    A negative ``start``/``end`` counts from the end (``+ n``); then, for ``step > 0``, both are
    clamped to ``[0, n]``; for ``step < 0``, ``start`` to ``[0, n-1]`` and ``end`` to
    ``[-1, n-1]``. ``None`` is the axis' first element in the direction of ``step`` (``start``)
    or past its last (``end``), as an omitted bound in NumPy.
    """
    if start is not None and start < 0:
        start += n
    if end is not None and end < 0:
        end += n
    if step > 0:
        first = 0 if start is None else clamp(start, 0, n)
        stop = n if end is None else clamp(end, 0, n)
        return first, -(-(stop - first) // step)
    first = n - 1 if start is None else clamp(start, 0, n - 1)
    stop = -1 if end is None else clamp(end, -1, n - 1)
    return first, -(-(first - stop) // -step)
