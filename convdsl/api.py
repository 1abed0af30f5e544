"""The Python API: compile a ``.conv`` file or string for a backend, then call it.

>>> import numpy as np, convdsl
>>> net = convdsl.compile_string('''
... input x: f32[N, 3, 8, 8]
... output y = conv2d(x, 4, kernel=3, padding=same, activation=relu)
... ''')
>>> net.inputs["x"].shape, net.outputs["y"].shape
((N, 3, 8, 8), (N, 4, 8, 8))
>>> net(x=np.ones((2, 3, 8, 8), np.float32))["y"].shape
(2, 4, 8, 8)

Two backends (``BACKENDS``): ``"llvm"``, the default, the whole graph JIT-compiled to one
native function over a memory-planned arena (``convdsl.backends.llvm``), and ``"numpy"``, the
reference interpreter (no compile step: quicker for a single run of a network not yet
cached). The llvm backend always runs on a memory plan, so a graph compiled below -O2 (whose
pipeline did not plan memory) is planned here before lowering.

Every user mistake raises ``convdsl.ConvdslError`` carrying diagnostics with file, line and
column; anything else escaping is a bug in convdsl.
"""

from __future__ import annotations

import difflib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from convdsl import weights as weights_io
from convdsl.backends.numpy.interpreter import NumpyExecutable
from convdsl.diagnostics import ConvdslError, Diagnostic, DiagnosticSink, Source, error
from convdsl.interop.pytorch import Rename, rename_weights
from convdsl.ir import boundary, limits
from convdsl.ir.derived import materialize
from convdsl.ir.graph import Graph, Param
from convdsl.ir.types import AXIS_NAMES, TensorType, format_shape
from convdsl.passes.layout import choose_layouts
from convdsl.passes.memory import plan_memory
from convdsl.passes.pipeline import frontend, run_passes, specialize_checked
from convdsl.passes.specialize import check_sizes

if TYPE_CHECKING:
    from convdsl.backends.llvm.executable import LlvmExecutable

Executable = Union[NumpyExecutable, "LlvmExecutable"]

BACKENDS = ("llvm", "numpy")
DEFAULT_BACKEND = "llvm"
MAX_THREADS = 256
"""The most threads a network runs on: its pool starts them at once, and far more than
the cores only slows a run, while thousands can pass the process's thread limit."""
THREADS_VARIABLE = "CONVDSL_NUM_THREADS"
"""The environment variable that sets the default thread count."""


MAX_SPECIALIZATIONS = 8
"""Input sizes whose compiled code a network keeps at once (least recently used goes first;
compiling it again reads the code cache)."""


class Network:
    """A checked network bound to parameters and a backend; call it with named arrays.

    A network whose inputs leave sizes open (``f32[N, 3, H, W]``) is compiled for the sizes of
    each call's arrays the first time they are seen, and keeps the code for the last
    ``MAX_SPECIALIZATIONS`` sizes; ``graph`` is then the symbolic graph ``check`` shows.
    """

    def __init__(
        self,
        graph: Graph,
        backend: str = DEFAULT_BACKEND,
        weights: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        weights_origin: str = "weights",
        threads: int | None = None,
        bounds_check: bool = False,
        *,
        opt_level: int = 2,
        verify: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise error(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
        threads = resolve_threads(threads)
        if not graph.is_symbolic:
            graph = backend_graph(graph, backend)
        self.graph = graph
        self.backend = backend
        self.threads = threads
        self.bounds_check = bounds_check
        self.opt_level = opt_level
        self.verify = verify
        self.fixed_sizes: dict[str, int] = {}
        """The input sizes the source left open and ``compile_*(sizes=...)`` fixed."""
        self.weights: dict[str, np.ndarray] = (
            weights_io.init_params(graph.params, seed)
            if weights is None
            else weights_io.check_weights(weights, graph.params, weights_origin)
        )
        self._lock = threading.Lock()
        self._specialized: OrderedDict[tuple[int, ...], tuple[Graph, Executable]] = OrderedDict()
        self._executable: Executable | None = None
        if not graph.is_symbolic:
            self._executable = self._build(graph, materialize(graph, self.weights))

    def _build(self, graph: Graph, params: Mapping[str, np.ndarray]) -> Executable:
        if self.backend == "llvm":
            # Imported here: llvmlite loads only for networks that use it.
            from convdsl.backends.llvm.executable import LlvmExecutable

            return LlvmExecutable(
                graph, params, threads=self.threads, bounds_check=self.bounds_check
            )
        return NumpyExecutable(graph, params)

    @property
    def sizes(self) -> list[str]:
        """The input size names the network is specialized over (``["H", "W"]``), or []."""
        return self.graph.size_names()

    def specialize(self, **sizes: int) -> Graph:
        """The graph this network runs for input ``sizes`` (``H=224, W=224``), compiled once
        per sizes; a size that breaks a constraint of the network is a ``ConvdslError``
        naming the layer, the sizes and the constraint."""
        return self._for_sizes(sizes)[0]

    def _for_sizes(self, sizes: Mapping[str, int]) -> tuple[Graph, Executable]:
        if self._executable is not None:
            return self.graph, self._executable
        assert self.graph.written is not None
        names = self.sizes
        check_sizes(names, sizes)
        key = tuple(int(sizes[name]) for name in names)
        with self._lock:
            found = self._specialized.get(key)
            if found is not None:
                self._specialized.move_to_end(key)
                return found
            bound = dict(zip(names, key, strict=True))
            untyped = specialize_checked(self.graph.written, bound)
            graph = run_passes(untyped, opt_level=self.opt_level, check=self.verify)
            graph = backend_graph(graph, self.backend)
            built = (graph, self._build(graph, materialize(graph, self.weights)))
            self._specialized[key] = built
            while len(self._specialized) > MAX_SPECIALIZATIONS:
                self._specialized.popitem(last=False)
            return built

    # ---- inspection ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def inputs(self) -> dict[str, TensorType]:
        return {self.graph.values[v].name: self.graph.type_of(v) for v in self.graph.inputs}

    @property
    def outputs(self) -> dict[str, TensorType]:
        return {name: self.graph.type_of(v) for name, v in self.graph.outputs}

    @property
    def params(self) -> dict[str, Param]:
        return dict(self.graph.params)

    # ---- weights ---------------------------------------------------------------------------

    def load_weights(
        self, path: str | Path, *, strip_prefix: str | None = None, rename: Rename | None = None
    ) -> None:
        """Replace every parameter with the arrays of an ``.npz`` or ``.safetensors`` file
        (checked by name and shape; names mapped as ``set_weights`` does)."""
        self.set_weights(
            weights_io.read_weights(path), str(path), strip_prefix=strip_prefix, rename=rename
        )

    def set_weights(
        self,
        arrays: Mapping[str, Any],
        origin: str = "weights",
        *,
        strip_prefix: str | None = None,
        rename: Rename | None = None,
    ) -> None:
        """Replace every parameter: ``arrays`` maps names to NumPy arrays or torch tensors (a
        PyTorch ``state_dict``). ``strip_prefix`` (``"module."``) is removed from the names
        that start with it, then ``rename`` (a dict or a function) maps names; see
        ``convdsl.interop.pytorch.rename_weights``."""
        if strip_prefix is not None or rename is not None:
            if not isinstance(arrays, Mapping):
                weights_io.check_weights(arrays, self.graph.params, origin)  # the type error
            arrays = rename_weights(arrays, strip_prefix, rename)
        self.weights = weights_io.check_weights(arrays, self.graph.params, origin)
        with self._lock:
            if self._executable is not None:
                self._executable = self._rebind(self.graph, self._executable)
            for key, (graph, executable) in self._specialized.items():
                self._specialized[key] = (graph, self._rebind(graph, executable))

    def _rebind(self, graph: Graph, executable: Executable) -> Executable:
        params = materialize(graph, self.weights)
        if isinstance(executable, NumpyExecutable):
            return NumpyExecutable(graph, params)
        executable.bind(params)  # no recompile: only the parameter table changes
        return executable

    def save_weights(self, path: str | Path, overwrite: bool = False) -> None:
        """Write every parameter to an ``.npz`` or ``.safetensors`` file (by its name)."""
        weights_io.save_weights(path, self.weights, overwrite=overwrite)

    def to_onnx(self, path: str | Path, opset: int | None = None, overwrite: bool = False) -> None:
        """Write the network as written, with its weights, as an ONNX model (``opset`` 13 up to
        the newest the ``onnx`` package knows; default 21). Sizes the network leaves open stay
        dynamic; see ``docs/interop.md`` and ``convdsl.interop.onnx_export``."""
        from convdsl.interop.onnx_export import network_to_onnx

        network_to_onnx(self, path, opset=opset, overwrite=overwrite)

    # ---- running ---------------------------------------------------------------------------

    def random_inputs(
        self, seed: int = 0, batch: int = 1, sizes: Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Standard-normal arrays for every input, the batch bound to ``batch`` and the input
        sizes (``H``, ``W``) to ``sizes``."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise error(f"batch must be a positive integer, found {batch!r}")
        graph = self._for_sizes(sizes or {})[0]  # checks the sizes first
        too_large = limits.batch_problem(batch, limits.largest_entry(graph))
        if too_large is not None:  # before anything is allocated
            raise error(f"random inputs: {too_large}", hint=limits.HINT)
        rng = np.random.default_rng(seed)
        types = {graph.values[v].name: graph.type_of(v) for v in graph.inputs}
        orders = {graph.values[v].name: boundary.caller_shape(graph, v) for v in graph.inputs}
        shapes = {name: tuple(d if isinstance(d, int) else batch for d in orders[name])
                  for name in types}  # fmt: skip
        try:
            return {
                name: rng.standard_normal(shapes[name]).astype(t.dtype.numpy)
                for name, t in types.items()
            }
        except MemoryError:
            gib = sum(8 * math.prod(shape) for shape in shapes.values()) / 2**30
            raise error(
                f"random inputs of batch {batch} need {gib:.1f} GiB, more than can be allocated"
            ) from None

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        """Run the network: named input arrays in, named output arrays out."""
        if inputs is not None and not isinstance(inputs, Mapping):
            raise error(
                f"expected input arrays by name, e.g. net(x=array) or net({{'x': array}}); "
                f"found {type(inputs).__name__}"
            )
        given = {**(inputs or {}), **named}
        sizes: dict[str, int] = {}
        if self._executable is None:  # the input sizes pick the specialization
            bindings = _check_inputs(self.graph, given, convert=False)[1]
            sizes = {name: bindings[name][0] for name in self.sizes}
        graph, executable = self._for_sizes(sizes)
        by_id = _check_inputs(graph, given)[0]
        results = executable.run(boundary.stored_inputs(graph, by_id))
        return boundary.caller_outputs(graph, results)

    run = __call__


def _check_inputs(
    graph: Graph, given: Mapping[str, Any], convert: bool = True
) -> tuple[dict[int, np.ndarray], dict[str, tuple[int, str]]]:
    """The arrays by value id, checked against ``graph``'s inputs, and the size each symbol
    was bound to (with the input that bound it). ``convert=False`` only checks."""
    sink = DiagnosticSink()
    bindings: dict[str, tuple[int, str]] = {}
    arrays: dict[int, np.ndarray] = {}
    expected = {graph.values[v].name: v for v in graph.inputs}
    for name in given:
        if name not in expected:
            close = difflib.get_close_matches(str(name), list(expected), n=1)
            sink.error(
                f"unexpected input '{name}'; the network's inputs are {', '.join(expected)}",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
    for name, value_id in expected.items():
        span = graph.values[value_id].span
        t = graph.type_of(value_id)
        if name not in given:
            sink.error(f"missing input '{name}' ({t})", span)
            continue
        array = _as_array(given[name])
        if array is None or array.dtype.kind not in "fiub":
            found = _describe_input(given[name], array)
            sink.error(f"input '{name}': expected a numeric array ({t}), found {found}", span)
            continue
        last = value_id in graph.channels_last_inputs
        want = boundary.caller_order(t.shape, last)
        problem = _shape_problem(t, last, array.shape, name, bindings, graph)
        if problem:
            layout, hint = _layout_mixup(graph, value_id, array.shape, bindings)
            sink.error(
                f"input '{name}': expected shape {format_shape(want)}{layout}, found "
                f"{format_shape(array.shape)}{problem}",
                span,
                hint=hint,
            )
            continue
        if convert:
            arrays[value_id] = np.ascontiguousarray(array, dtype=t.dtype.numpy)
    sink.raise_if_errors()
    return arrays, bindings


def resolve_threads(threads: object = None) -> int:
    """``threads`` checked (an integer from 1 to ``MAX_THREADS``), or when it is None the
    default: ``$CONVDSL_NUM_THREADS`` if set, else the CPUs this process may run on."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise error(f"threads must be a positive integer, found {threads!r}")
    if threads > MAX_THREADS:
        raise error(f"threads must be at most {MAX_THREADS}, found {threads}")
    return threads


def default_threads() -> int:
    """``$CONVDSL_NUM_THREADS`` if set, else the CPUs this process may run on (its affinity
    mask: what a container or ``taskset`` allows, not the machine's count), at most
    ``MAX_THREADS``."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if text:
        if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
            raise error(f"{THREADS_VARIABLE}={text}: expected an integer from 1 to {MAX_THREADS}")
        return int(text)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def backend_graph(graph: Graph, backend: str) -> Graph:
    """The graph ``backend`` runs: for llvm, with layouts chosen and a memory plan even below
    -O2 (its strided convolutions read phase rows, and it runs in one arena)."""
    if backend == "llvm" and graph.memory is None:
        return plan_memory(choose_layouts(graph))
    return graph


def check_backend(graph: Graph, backend: str, threads: int | None = None) -> None:
    """Check that ``backend`` can run ``graph`` without compiling anything: every op has a
    lowering (the llvm backend's layouts and memory plan are made, as a run would), and the
    options are valid. Native code is built when the network is, not when it is checked."""
    if backend not in BACKENDS:
        raise error(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
    resolve_threads(threads)
    if backend == "llvm":
        from convdsl.backends.llvm.lower import check_lowerable

        check_lowerable(graph if graph.is_symbolic else backend_graph(graph, backend))


def _as_array(value: Any) -> np.ndarray | None:
    try:
        return np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists and the like
        return None


def _describe_input(value: Any, array: np.ndarray | None) -> str:
    if array is None:
        return "a ragged sequence"
    if array.dtype.kind == "O" and not isinstance(value, np.ndarray):
        return type(value).__name__
    return f"dtype {array.dtype}"


def _shape_problem(
    t: TensorType,
    channels_last: bool,
    shape: tuple[int, ...],
    name: str,
    bindings: dict[str, tuple[int, str]],
    graph: Graph,
) -> str:
    """What is wrong with an input's ``shape`` (as `` (...)``), or ''; ``channels_last``: the
    array has its channels last. A symbol is bound on first use; a batch
    must keep every array of ``graph`` within ``limits`` (checked once the graph is
    specialized), a size must be within ``limits.MAX_EXTENT``."""
    if len(shape) != t.rank:
        return f" (rank {len(shape)}, expected {t.rank})"
    names = boundary.caller_order(_dim_names(t), channels_last)
    expected = boundary.caller_order(t.shape, channels_last)
    for axis, (want, got) in enumerate(zip(expected, shape, strict=True)):
        if isinstance(want, int):
            if want != got:
                return f" ({names[axis]} is {got}, expected {want})"
            continue
        symbol = str(want)
        if got < 1:
            return f" ({symbol} must be at least 1)"
        if symbol in bindings and bindings[symbol][0] != got:
            size, other = bindings[symbol]
            return f" ({symbol} is {got} here but {size} in input '{other}')"
        if symbol not in bindings:
            if isinstance(want, str):
                largest = None if graph.is_symbolic else limits.largest_entry(graph)
                too_large = None if largest is None else limits.batch_problem(got, largest)
            else:
                too_large = limits.size_problem(symbol, got)
            if too_large is not None:
                return f" ({symbol} is {got}: {too_large})"
            bindings[symbol] = (got, name)
    return ""


def _dim_names(t: TensorType) -> tuple[str, ...]:
    names = ("batch", "channels", *AXIS_NAMES.get(t.spatial_rank, ()))
    return tuple(names[axis] if axis < len(names) else f"dim {axis}" for axis in range(t.rank))


def _layout_mixup(
    graph: Graph, value: int, shape: tuple[int, ...], bindings: dict[str, tuple[int, str]]
) -> tuple[str, str | None]:
    """For an input whose array has the wrong shape: `` (channels last: NHWC)`` naming its
    layout, and a hint, where the layout matters (a channels-last input, or an array that
    has the channels-first input's shape in channels-last order)."""
    t = graph.type_of(value)
    last = value in graph.channels_last_inputs
    flipped = not _shape_problem(t, not last, shape, "", dict(bindings), graph)
    if t.spatial_rank == 0 or not (last or flipped):
        return "", None
    name = graph.values[value].name
    if last:
        word = graph.channels_last_inputs[value].word
        order = format_shape(boundary.caller_order(_dim_names(t), True)).replace(",", ", ")
        hint = (
            f"input '{name}' is declared {word}: pass its array as {order}; a channels-first "
            "array `a` is np.moveaxis(a, 1, -1)"
        )
    else:
        word = boundary.LAST_NAMES[t.spatial_rank].lower()
        hint = (
            f"the array looks channels-last: pass np.moveaxis(a, -1, 1), or declare the input "
            f"channels-last: input {name}: {word} {t.dtype.value}[...]"
        )
    return f" ({boundary.describe(t.spatial_rank, last)})", hint


def compile_string(
    text: str,
    name: str = "<string>",
    *,
    backend: str = DEFAULT_BACKEND,
    opt_level: int = 2,
    weights: str | Path | Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    verify: bool = False,
    threads: int | None = None,
    bounds_check: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> Network:
    """Compile ``.conv`` source text; ``name`` is the file name used in diagnostics.

    A network whose inputs leave sizes open (``f32[N, 3, H, W]``) compiles for the sizes of
    the arrays it is called with (once per sizes); ``sizes={"H": 224, "W": 224}`` fixes them
    now instead, and the network then takes only those.

    ``backend`` is ``"llvm"`` (default) or ``"numpy"``; ``threads`` is the llvm backend's
    thread count (the numpy backend ignores it), by default ``$CONVDSL_NUM_THREADS`` or the
    CPUs this process may run on. ``bounds_check=True`` builds llvm code that
    checks every load and store against its buffer and raises ``InternalError`` naming the
    kernel and the value instead of touching memory outside it (slow: for tests and for
    hunting a crash).
    """
    if backend not in BACKENDS:  # before compiling: a typo should not cost a compile
        raise error(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
    untyped = frontend(Source(name, text))
    if sizes:
        untyped = specialize_checked(untyped, sizes)
    graph = run_passes(untyped, opt_level=opt_level, check=verify)
    arrays = weights_io.read_weights(weights) if isinstance(weights, str | Path) else weights
    origin = str(weights) if isinstance(weights, str | Path) else "weights"
    net = Network(
        graph,
        backend=backend,
        weights=arrays,
        seed=seed,
        weights_origin=origin,
        threads=threads,
        bounds_check=bounds_check,
        opt_level=opt_level,
        verify=verify,
    )
    net.fixed_sizes = {name: int(size) for name, size in (sizes or {}).items()}
    return net


def compile_file(
    path: str | Path,
    *,
    backend: str = DEFAULT_BACKEND,
    opt_level: int = 2,
    weights: str | Path | Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    verify: bool = False,
    threads: int | None = None,
    bounds_check: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> Network:
    """Compile a ``.conv`` file (see ``compile_string``)."""
    return compile_string(
        read_source(path).text,
        str(path),
        backend=backend,
        opt_level=opt_level,
        weights=weights,
        seed=seed,
        verify=verify,
        threads=threads,
        bounds_check=bounds_check,
        sizes=sizes,
    )


def read_source(path: str | Path) -> Source:
    path = Path(path)
    try:
        return Source(str(path), path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a .conv file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None


__all__ = ["ConvdslError", "Diagnostic", "Network", "compile_file", "compile_string"]
