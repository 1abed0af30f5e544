"""How a convolution kernel walks its output: tile shape, channel chunks, work items, rows.

The register tile (``emit_conv_tile``) is ``block`` output channels times ``vectors`` vectors
along the last axis. Around it, one work item (what a thread takes) is a batch entry, one index
on every outer spatial axis and ``group`` consecutive channel blocks. Inside an item the input
channels are walked in chunks of ``chunk``: for every chunk, every tile of the row, every
channel block. The rows of one chunk of input channels (a few KiB) then stay in L1 while every
channel block reads them, instead of each block streaming all input channels from L2 again;
the sums of unfinished chunks wait in the output buffer (the memory plan never lets a conv's
output share bytes with its input), and the last chunk applies the epilogue.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from convdsl.backends.llvm.kernel import kernel_lanes, spatial_of
from convdsl.ir.graph import Attrs, Graph, Node

ACCUMULATORS = 12  # of 16 vector registers on AVX2: leaves room for inputs and a weight
MAX_VECTORS = 3  # per tile along the row
CHUNK_ROWS = 96  # input rows (channels x outer taps) per chunk at most (``channel_chunks``)
WIDE_CHUNK_ROWS = 48  # ... and at least, where rows are so wide that fewer would fit in L1
ITEMS_PER_THREAD = 4  # work items per thread at least, for balance
SHARE_DILATIONS = True  # see ``dilation_stacks``
SHARE_CHANNELS = True  # see ``channel_stacks``
FLAT_PLANES = True  # see ``flat_plane``
REST_BLOCKS = True  # see ``conv_schedule``: a block that need not divide the channels
BLOCKS = (12, 8, 6, 4, 3, 2, 1)
L1_BYTES, L2_BYTES = 32 * 1024, 512 * 1024  # per core, on the Zen 3 and Zen 4 seen here
CONV_OPS = frozenset(f"{kind}{rank}d" for kind in ("conv", "depthwise") for rank in (1, 2, 3))


@dataclass(frozen=True, slots=True)
class ConvSchedule:
    block: int  # output channels per tile: divides a group's, or is a multiple of them
    vectors: int  # native vectors per tile along the last axis
    chunk: int  # input channels per chunk
    group: int  # channel blocks per work item
    rest: int = 0  # channels of one narrower last block when ``block`` does not divide them
    # tile sizes (in vectors) other than ``vectors`` that take their own widest block
    wide_tiles: frozenset[int] = frozenset()

    @property
    def whole_rows(self) -> bool:
        """Each work item is a row with every channel block."""
        return self.rest > 0 or bool(self.wide_tiles)

    def tile_blocks(self, out_channels: int, vectors: int) -> tuple[int, int]:
        """``(block, rest)`` for a tile of ``vectors`` vectors: the schedule's, or the widest
        block for that many vectors (a row of 7 vectors is tiled 3 + 2 + 2: 4 x 3 and 6 x 2
        tiles, each 12 accumulators)."""
        if vectors not in self.wide_tiles:
            return self.block, self.rest
        return _widest(out_channels, vectors, self.block, self.rest)


def _widest(out_channels: int, vectors: int, block: int, rest: int) -> tuple[int, int]:
    """The block with the most accumulators for ``vectors`` vectors (with the channels it
    leaves over), if it has more than ``block``'s; else ``(block, rest)``."""
    wide = next(b for b in BLOCKS if b * vectors <= ACCUMULATORS and b <= out_channels)
    return (wide, out_channels % wide) if wide > block else (block, rest)


def conv_schedule(
    graph: Graph,
    node: Node,
    sizes: tuple[int, ...],
    lanes: int,
    threads: int,
    plane: bool = False,
) -> ConvSchedule:
    """The schedule of ``node`` over output spatial ``sizes`` (the walked view: one flat row
    for a flattened pointwise conv or ``plane``)."""
    a = node.attrs
    per_group = a["out_channels"] // a["groups"]
    width = sizes[-1]
    count = -(-width // lanes)  # vectors per row; row_segments spreads them evenly on tiles
    vectors = -(-count // -(-count // MAX_VECTORS))
    out_channels = a["out_channels"]

    def fits(b: int) -> bool:  # a tile's channels: within one group, or whole groups
        spans = per_group % b == 0 or (b % per_group == 0 and out_channels % b == 0)
        return spans and b * vectors <= ACCUMULATORS

    block = next(b for b in BLOCKS if fits(b))
    rows = math.prod(sizes[:-1])
    # Items that are whole rows (every channel block) may end on a narrower block: rows of 2
    # or 4 vectors with a power-of-two channel count then get 6 x 2 tiles (12 accumulators)
    # and a last block of out_channels % 6, where 4 x 2 left the FMA units waiting. Tiles of
    # another size take their own widest block where they hold a third of the row or more
    # (7 vectors: 3 + 2 + 2), not where they are a few (28: eight of 3, two of 2), since
    # each block size is one more copy of the tile's code.
    whole_rows = REST_BLOCKS and a["groups"] == 1 and rows >= ITEMS_PER_THREAD * threads
    block, rest = _widest(out_channels, vectors, block, 0) if whole_rows else (block, 0)
    tiles = -(-count // vectors)
    tile_sizes = [count // tiles + (t < count % tiles) for t in range(tiles)]  # row_segments
    wide_tiles = frozenset(
        size
        for size in set(tile_sizes) - {vectors}
        if whole_rows
        and 3 * size * tile_sizes.count(size) >= count
        and _widest(out_channels, size, block, rest)[0] != block
    )
    if block * vectors < ACCUMULATORS // 2:  # few channels (depthwise): widen the tile instead
        vectors = max(vectors, min(ACCUMULATORS // block, 4, -(-width // lanes)))
    _, chunk = channel_chunks(graph, node, plane)
    blocks = a["out_channels"] // block
    group = next(
        (
            d
            for d in range(blocks, 0, -1)
            if blocks % d == 0 and rows * (blocks // d) >= ITEMS_PER_THREAD * threads
        ),
        1,
    )
    assert not whole_rows or group == blocks
    return ConvSchedule(block, vectors, chunk, group, rest, wide_tiles)


def blocks_first(graph: Graph, node: Node, plan: ConvSchedule, flat: bool) -> bool:
    """Walk a segment of the row block by block, each block over every tile, instead of tile
    by tile over every block, when neither a chunk's input rows nor its weights fit in L1
    but the rows fit in L2: each block's weights then stay in L1 while the rows stream from
    L2 (a 3x3 conv of 32 channels 224 wide, when its chunks of 32 channels had 86 KiB of
    rows and 37 KiB of weights: 10-13% faster on 1 and 2 threads; with chunks of 16, 43 and
    18 KiB, 14.3 -> 12.6 ms on one thread; 56 wide, 21 KiB: as fast either way). A
    flattened conv's "row" is a whole plane: its tiles keep their input in L1 over every
    block."""
    a = node.attrs
    x_type = graph.type_of(node.inputs[0])
    itemsize = x_type.dtype.numpy.itemsize
    outer_taps = math.prod(a["kernel"][:-1])
    rows = plan.chunk * outer_taps * spatial_of(x_type)[-1] * itemsize
    weights = plan.chunk * outer_taps * a["kernel"][-1] * plan.group * plan.block * itemsize
    return not flat and rows > L1_BYTES and weights > L1_BYTES // 2 and rows <= L2_BYTES // 2


def channel_chunks(graph: Graph, node: Node, plane: bool = False) -> tuple[int, int]:
    """``(chunks, chunk)``: how many chunks ``node`` walks its input channels (per group) in,
    and how many channels each has (the last may have fewer). A chunk's input rows (channels
    x outer taps) fit in L1, between ``WIDE_CHUNK_ROWS`` and ``CHUNK_ROWS`` of them: 3x3
    layers 112 and 224 wide then take 22-24 and 16 channels per chunk instead of 32, whose
    rows (43 and 86 KiB) streamed from L2 (one thread, min of 12 interleaved runs: 64
    channels at 112x112 11.0-11.2 -> 10.5-10.7 ms, 32 at 224x224 16.0-16.2 -> 15.2-15.6; 8
    channels at 224 wide were slower again). A flattened walk (``plane``, ``flat_pointwise``)
    reads a tile's few vectors of each row, not whole rows: ``CHUNK_ROWS`` (16 channels made
    two 256-channel 3x3 layers at 28x28 5% slower than 32)."""
    a = node.attrs
    x_type = graph.type_of(node.inputs[0])
    group_in = x_type.channels // a["groups"]
    rows = CHUNK_ROWS
    if not plane:
        row_bytes = spatial_of(x_type)[-1] * x_type.dtype.numpy.itemsize
        rows = min(CHUNK_ROWS, max(WIDE_CHUNK_ROWS, L1_BYTES // row_bytes))
    limit = max(8, rows // math.prod(a["kernel"][:-1]))
    chunks = -(-group_in // limit)
    return chunks, -(-group_in // chunks)


# A conv anchor's kernel, less what it may read at run time (``_stacks``), and that part.
Split = tuple[tuple, object]


def dilation_stacks(graph: Graph) -> frozenset[int]:
    """The convolution anchors (by output) whose last-axis dilation and left padding their
    kernel reads at run time, finding its border tiles at run time too: dilated convolutions
    over dense rows whose kernels differ from another's only there (WaveNet's dilations 2, 4,
    ..., 512: one kernel each for the filter and the gate instead of nine; as fast). A lone
    dilated convolution keeps them as constants: read at run time they made L6 3-5% and L5
    20-25% slower (a register per tap; whole border tiles masked, where constants mask only
    the vectors that cross, and L5's 64-wide rows are mostly border)."""

    def split(node: Node, anchor: Node) -> Split | None:
        a = anchor.attrs
        if graph.type_of(anchor.inputs[0]).layout is not None:
            return None
        if a["kernel"][-1] < 2 or a["dilation"][-1] < 2:
            return None
        rest = {**a, "dilation": a["dilation"][:-1], "pads": a["pads"][:-1]}
        types = tuple(repr(graph.type_of(v)) for v in (*anchor.inputs, node.output))
        return (repr(rest), types), (a["dilation"][-1], a["pads"][-1][0])

    return _stacks(graph, split) if SHARE_DILATIONS else frozenset()


def channel_stacks(graph: Graph, lanes: int) -> frozenset[int]:
    """The convolution anchors (by output) whose input channel count their kernel reads at
    run time: convs walking their input channels in two chunks or more (so the loop bounds
    are run-time values anyway) whose kernels differ from another's only in that count, by
    chunks of the same size (FCN-8s: 64 -> 128 and 128 -> 128 at 56x56, 128 -> 256 and
    256 -> 256 at 28x28; 4k of its 23k lines of LLVM IR). A lone conv keeps it a constant:
    read at run time it made L3 (1x1, 256 -> 256, three chunks) 3% slower."""

    def split(node: Node, anchor: Node) -> Split | None:
        x_type = graph.type_of(anchor.inputs[0])
        group_in = x_type.channels // anchor.attrs["groups"]
        dtype = graph.type_of(node.output).dtype
        plane = flat_plane(graph, anchor, kernel_lanes(lanes, dtype)) is not None
        chunks, chunk = channel_chunks(graph, anchor, plane)
        if chunks < 2:
            return None
        x_shape = (x_type.batch, "C", *x_type.shape[2:])  # any channel count
        types = (x_shape, x_type.dtype, x_type.layout, repr(graph.type_of(node.output)))
        return (repr(anchor.attrs), chunk, repr(types)), group_in

    return _stacks(graph, split) if SHARE_CHANNELS else frozenset()


def _stacks(graph: Graph, split: Callable[[Node, Node], Split | None]) -> frozenset[int]:
    """The conv anchors (by output) of kernels that are alike but for what ``split`` sets
    apart (``(the rest, that part)``, or None for a conv it does not apply to), where that
    part differs between them: read at run time, it lets them share one function."""
    kernels: dict[tuple, list[tuple[int, object]]] = {}
    for node in graph.nodes:
        parts = node.parts if node.is_fused else (node,)
        anchor = parts[0]
        if anchor.op not in CONV_OPS or (found := split(node, anchor)) is None:
            continue
        rest, varying = found
        after = tuple((part.op, repr(sorted(part.attrs.items()))) for part in parts[1:])
        kernels.setdefault((anchor.op, rest, after), []).append((anchor.output, varying))
    return frozenset(
        output
        for members in kernels.values()
        if len({varying for _, varying in members}) > 1
        for output, _ in members
    )


def one_position(graph: Graph, node: Node) -> bool:
    """A convolution that ``lower`` computes as a matrix-vector product: pointwise,
    ungrouped, with an output (and so an input) of one position."""
    a = node.attrs
    return (
        math.prod(graph.type_of(node.output).spatial or (1,)) == 1
        and a["groups"] == 1
        and all(k == 1 for k in a["kernel"])
        and all(p == (0, 0) for p in a["pads"])
        and graph.type_of(node.inputs[0]).layout is None
        and math.prod(graph.type_of(node.inputs[0]).spatial or (1,)) == 1
    )


def lane_steps(width: int, steps: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Cover ``range(width)`` with ``(start, stop, step)`` runs, widest steps first."""
    runs = []
    start = 0
    for step in dict.fromkeys(steps):
        stop = start + (width - start) // step * step
        if stop > start:
            runs.append((start, stop, step))
        start = stop
    return runs


def flat_pointwise(graph: Graph, node: Node, lanes: int) -> Node | None:
    """A pointwise convolution (kernel 1, stride 1, no padding) reads and writes every spatial
    position once, so its whole plane can be one row. The anchor as a 1-D convolution over the
    flattened plane where rows are too short for a full register tile or waste more vector
    lanes (a 14x14 plane is 14 rows of 2 vectors for 14 values, or 25 vectors for 196);
    otherwise None."""
    a = node.attrs
    sizes = spatial_of(graph.type_of(node.output))
    pointwise = all(k == 1 for k in a["kernel"]) and all(s == 1 for s in a["stride"])
    if len(sizes) < 2 or not pointwise or any(p != (0, 0) for p in a["pads"]):
        return None
    plane = math.prod(sizes)
    row_waste = (-sizes[-1] % lanes) * (plane // sizes[-1])
    if sizes[-1] >= MAX_VECTORS * lanes and row_waste <= -plane % lanes:
        return None
    flat = {"kernel": (1,), "stride": (1,), "dilation": (1,), "pads": ((0, 0),)}
    return dataclasses.replace(node, attrs=Attrs({**node.attrs, **flat}))


@dataclass(frozen=True)
class Plane:
    """A 2-D convolution walked over its flattened output plane (``flat_plane``): tap ``t``
    reads the input at flat index ``p + offsets[t]`` for output ``p``, where its row offset
    ``rows[t]`` and column offset ``cols[t]`` stay inside the ``height x width`` input."""

    height: int
    width: int  # of the input and the output
    rows: tuple[int, ...]  # per tap, row-major as the weights are packed
    cols: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(r * self.width + c for r, c in zip(self.rows, self.cols, strict=True))


def flat_plane(graph: Graph, node: Node, lanes: int) -> Plane | None:
    """A 2-D convolution of stride 1 whose output rows are as wide as its input rows (same
    padding on the last axis) reads each tap at one fixed offset from the output position in
    the flattened planes, so the plane can be walked as one row, each load masked to the
    lanes whose tap falls inside the input. Taken where rows waste a tenth of their vector
    lanes or more (28 wide: 32 lanes for 28) and flattening wastes fewer, or rows are one
    vector (7 wide: 8 x 1 tiles, 7 of 8 lanes used, became 4 x 3 tiles); otherwise None (as
    for a kernel of one tap: ``flat_pointwise``)."""
    a = node.attrs
    x_type = graph.type_of(node.inputs[0])
    if not FLAT_PLANES or x_type.layout is not None or len(a["kernel"]) != 2:
        return None
    (height, width), (out_rows, out_width) = x_type.spatial, spatial_of(graph.type_of(node.output))
    if any(s != 1 for s in a["stride"]) or out_width != width or math.prod(a["kernel"]) == 1:
        return None
    row_waste = -width % lanes
    wasteful = row_waste * 10 >= width and row_waste * out_rows > -(out_rows * width) % lanes
    if not wasteful and width > lanes:  # rows of one vector make tiles of one vector
        return None
    taps = [
        (dh * a["dilation"][0] - a["pads"][0][0], dw * a["dilation"][1] - a["pads"][1][0])
        for dh in range(a["kernel"][0])
        for dw in range(a["kernel"][1])
    ]
    rows, cols = zip(*taps, strict=True)
    reach = height + out_rows + max(abs(r) for r in rows) + 1
    if reach * width >= 2**31:  # lane positions and their taps are i32 (``plane_masks``)
        return None
    return Plane(height, width, rows, cols)


def interior_range(node: Node, in_size: int, lanes: int) -> tuple[int, int]:
    """``[lo, hi)``: the vector starts ``w`` on the last axis (stride 1) whose every tap of
    every lane reads inside the input."""
    a = node.attrs
    dilation = a.get("dilation", (1,) * len(a["kernel"]))[-1]
    before = a["pads"][-1][0]
    reach = (a["kernel"][-1] - 1) * dilation
    # the load of tap t for lanes w..w+lanes-1 covers w - before + t * dilation + [0, lanes)
    return before, max(before, in_size + before - reach - lanes + 1)


@dataclass(frozen=True)
class Segment:
    """Tile starts ``range(start, stop, len(masked) * lanes)`` of an output row; ``masked[v]``:
    vector ``v`` of the tile touches the border; ``valid``: the segment is one tile whose last
    vector is partial, only its first ``valid`` lanes exist."""

    start: int
    stop: int
    masked: tuple[bool, ...]
    valid: int | None = None


def row_segments(width: int, lo: int, hi: int, vectors: int, lanes: int) -> list[Segment]:
    """Cover a row of ``width`` outputs with tiles of at most ``vectors`` vectors, the last
    vector possibly partial. Tiles are as even as possible (7 vectors: 3, 2, 2), because a
    tile of one vector has too few accumulators to hide the FMA latency. A vector is masked
    unless its start is in ``[lo, hi)`` (the interior); consecutive tiles of the same shape
    form one loop."""
    count = -(-width // lanes)  # vectors in the row, the last maybe partial
    tiles = -(-count // vectors)
    sizes = [count // tiles + (t < count % tiles) for t in range(tiles)]
    runs: list[list] = []  # [start, stop, masked, valid]; a WaveNet row has ~700 tiles
    start = 0
    for size in sizes:
        end = start + size * lanes
        masked = tuple(not lo <= start + v * lanes < hi for v in range(size))
        valid = width - (end - lanes) if end > width else None
        if valid is not None:
            masked = (*masked[:-1], True)
        last = runs[-1] if runs else None
        if last and valid is None and last[3] is None and last[2] == masked:
            last[1] = end
        else:
            runs.append([start, end, masked, valid])
        start = end
    return [Segment(*run) for run in runs]
