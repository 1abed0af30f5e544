"""Soak the llvm backend: many random networks, each run by llvm and by the numpy interpreter.

    python benchmarks/soak_llvm.py --count 2000 --seed 0 --out /tmp/soak
    python benchmarks/soak_llvm.py --replay /tmp/soak/00042-crash.json

The programs come from ``tests/random_networks.py`` (``multi_networks()``: several components
with their own batch symbols or fixed batch sizes, f32 and f64, unused and passed-through
inputs, several outputs, 1-D to 3-D), drawn by hypothesis from ``--seed``: the same seed and
hypothesis version give the same programs. Each network runs in one of at most two long-lived
worker processes, so a segfault or a glibc abort ("double free") kills a worker, not the soak;
a dead or hung (``--timeout``) worker is replaced. Workers run on glibc's checking malloc
(``--no-malloc-check`` turns it off) and free each network before they report, so heap damage
mostly shows on the network that made it; a failure in a worker that had run other networks is
run again in a fresh worker, and the record says whether it failed alone. ``--threads`` and
``--bounds-check`` are passed to the llvm compile (the latter only if convdsl has it).

Every outcome is one of: ok; mismatch (``compare_outputs`` of the backend tests); crash (the
worker died, with its signal and the last lines it wrote to stderr); internal error (an
exception escaped, or llvm refused a network the checker accepted); user error (the checker
rejected the program or its inputs: the generator's fault); timeout. Each failing program is
written to ``--out`` as ``NNNNN-outcome.conv`` and ``.json`` (text, seed, batch sizes, input
shapes, what happened). A summary table ends the run; the exit status is 1 unless all were ok.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import faulthandler
import gc
import inspect
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

# The generator lives with the tests it feeds (it builds on test_optimizer_differential).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

OUTCOMES = ("ok", "mismatch", "crash", "internal error", "user error", "timeout")
CONTEXT = multiprocessing.get_context("spawn")  # a worker starts clean, with no llvm state


@dataclass
class Job:
    index: int
    program: Any  # random_networks.Program
    seed: int  # weights and input arrays
    fresh: bool = False  # run in a worker that has run nothing else
    first: dict[str, Any] | None = None  # the failure that asked for a fresh run


# ---- the worker ----------------------------------------------------------------------------------


def run_case(program: Any, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    """(outcome, detail) of one program: llvm against the interpreter, same weights, same arrays."""
    from random_networks import compare_outputs, concrete_inputs
    from test_optimizer_differential import random_weights

    import convdsl

    try:
        reference = convdsl.compile_string(program.text, "soak.conv", backend="numpy")
    except convdsl.ConvdslError as exc:
        return "user error", f"the checker rejected it: {exc}"
    weights = random_weights(reference, seed)
    reference.set_weights(weights)
    _, inputs = concrete_inputs(program, seed)
    try:
        want = reference(inputs)
    except convdsl.ConvdslError as exc:
        return "user error", f"the inputs do not fit: {exc}"
    except Exception:
        return "internal error", f"numpy interpreter: {traceback.format_exc(limit=-3)}"
    try:
        native = convdsl.compile_string(
            program.text, "soak.conv", backend="llvm", weights=weights, **options
        )
        got = native(inputs)
    except Exception as exc:  # a ConvdslError too: the checker accepted the program
        kind = "refused" if isinstance(exc, convdsl.ConvdslError) else "raised"
        return "internal error", f"llvm {kind}: {traceback.format_exc(limit=-3)}"
    problems = compare_outputs(got, want)
    return ("mismatch", "\n".join(problems)) if problems else ("ok", "")


def worker_main(conn: Connection, log_path: str, options: dict[str, Any]) -> None:
    # glibc's heap messages and faulthandler's traceback go where the parent can read them
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    faulthandler.enable()
    while (job := conn.recv()) is not None:
        program, seed = job
        outcome = run_case(program, seed, options)
        gc.collect()  # the networks die here, so heap damage surfaces on this case
        conn.send(outcome)


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection
    log: Path
    done: int = 0  # jobs finished
    job: Job | None = None
    started: float = 0.0
    log_offset: int = 0

    @classmethod
    def start(cls, log: Path, options: dict[str, Any]) -> Worker:
        parent, child = CONTEXT.Pipe()
        process = CONTEXT.Process(target=worker_main, args=(child, str(log), options), daemon=True)
        process.start()
        child.close()
        return cls(process, parent, log)

    def give(self, job: Job) -> None:
        self.job, self.started = job, time.monotonic()
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.conn.send((job.program, job.seed))

    def stop(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError):  # it may have died already
                self.conn.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self.conn.close()

    def log_tail(self, lines: int = 25) -> str:
        with self.log.open("rb") as file:
            file.seek(self.log_offset)
            text = file.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# ---- the pool ------------------------------------------------------------------------------------


@dataclass
class Soak:
    options: dict[str, Any]
    workers: int
    timeout: float
    out: Path
    logs: Path
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    spawned: int = 0

    def new_worker(self) -> Worker:
        self.spawned += 1
        return Worker.start(self.logs / f"worker-{self.spawned}.log", self.options)

    def run(self, jobs: list[Job], total: int) -> None:
        pending = deque(jobs)
        pool = [self.new_worker() for _ in range(min(self.workers, len(jobs)))]
        while pending or any(w.job for w in pool):
            for slot, worker in enumerate(pool):
                if worker.job is None and pending:
                    job = pending.popleft()
                    if job.fresh and worker.done:
                        worker.stop()
                        pool[slot] = worker = self.new_worker()
                    worker.give(job)
            busy = [w for w in pool if w.job]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0)
            for slot, worker in enumerate(pool):
                finished = self.poll(worker)
                if finished is None:
                    continue
                job, record, replace = finished
                if replace:
                    pool[slot] = self.new_worker()
                if record["outcome"] not in ("ok", "user error", "timeout") and (
                    not job.fresh and record["after_other_networks"]
                ):  # it may be an earlier network's damage: run it alone to be sure
                    pending.appendleft(Job(job.index, job.program, job.seed, True, record))
                else:
                    self.finish(job, record, total)
        for worker in pool:
            worker.stop()

    def poll(self, worker: Worker) -> tuple[Job, dict[str, Any], bool] | None:
        """(job, record, the worker must be replaced) if the worker's job has ended."""
        job = worker.job
        if job is None:
            return None
        record: dict[str, Any]
        if worker.conn.poll():
            try:
                outcome, detail = worker.conn.recv()
                record, replace = {"outcome": outcome, "detail": detail}, False
            except EOFError:  # died after the pipe's last message
                record, replace = self.died(worker), True
        elif not worker.process.is_alive():
            record, replace = self.died(worker), True
        elif time.monotonic() - worker.started > self.timeout:
            worker.stop(kill=True)
            record = {"outcome": "timeout", "detail": f"no answer in {self.timeout:.0f} s"}
            replace = True
        else:
            return None
        record["seconds"] = round(time.monotonic() - worker.started, 2)
        record["after_other_networks"] = worker.done
        worker.job = None
        worker.done += 1
        return job, record, replace

    def died(self, worker: Worker) -> dict[str, Any]:
        worker.process.join(5)
        code = worker.process.exitcode or 0
        how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        tail = worker.log_tail()
        # glibc's message ("double free or corruption (out)"), cut from what follows it on its line
        heap = [
            line.split("Fatal Python error")[0]
            for line in tail.splitlines()
            if "free" in line or "corrupt" in line
        ]
        worker.conn.close()
        return {"outcome": "crash", "detail": " ".join([how, *heap[:1]]), "stderr": tail}

    def finish(self, job: Job, record: dict[str, Any], total: int) -> None:
        from random_networks import concrete_inputs

        if job.first is not None and record["outcome"] == "ok":  # the failure stands, marked
            record = {**job.first, "alone": "passed when run alone"}
        elif job.first is not None:  # the fresh run decides; the first failure is kept beside it
            record["first_run"] = job.first
        self.results[job.index] = record
        if len(self.results) % 100 == 0:
            counts = Counter(r["outcome"] for r in self.results.values())
            tally = ", ".join(f"{k} {v}" for k, v in counts.most_common())
            print(f"[{len(self.results):5d}/{total}] {tally}", flush=True)
        if record["outcome"] == "ok":
            return
        sizes, arrays = concrete_inputs(job.program, job.seed)
        stem = f"{job.index:05d}-{record['outcome'].replace(' ', '-')}"
        (self.out / f"{stem}.conv").write_text(job.program.text)
        saved = {
            "index": job.index,
            **record,
            "text": job.program.text,
            "seed": job.seed,
            "batch_sizes": sizes,
            "inputs": {name: [str(a.dtype), list(a.shape)] for name, a in arrays.items()},
            "declared": [[d.name, d.dtype, d.batch, list(d.dims)] for d in job.program.inputs],
            "options": self.options,
            "malloc_check": os.environ.get("MALLOC_CHECK_") == "3",
        }
        (self.out / f"{stem}.json").write_text(json.dumps(saved, indent=1))
        last_line = record["detail"].strip().splitlines()[-1:] or [""]
        print(
            f"[{len(self.results):5d}/{total}] #{job.index:05d} {record['outcome']}: "
            f"{last_line[0][:150]}",
            flush=True,
        )


# ---- the programs --------------------------------------------------------------------------------


def generate(count: int, seed: int) -> list[Job]:
    """``count`` distinct programs, each with a seed for its weights and arrays, from ``seed``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as start_from
    from hypothesis import strategies as st
    from random_networks import multi_networks

    jobs: list[Job] = []
    seen: set[str] = set()
    for round_ in range(20):  # hypothesis repeats small programs: more rounds fill the gap
        if len(jobs) == count:
            break

        # each round begins with the same few simplest programs: ask for plenty more
        @start_from(seed * 1_000_003 + round_)
        @settings(
            max_examples=max(2 * (count - len(jobs)), 100),
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(program=multi_networks(), data_seed=st.integers(0, 2**31 - 1))
        def collect(program: Any, data_seed: int) -> None:
            if program.text not in seen and len(jobs) < count:
                seen.add(program.text)
                jobs.append(Job(len(jobs), program, data_seed))

        collect()
    return jobs


def replayed(path: Path) -> Job:
    from random_networks import Declared, Program

    saved = json.loads(path.read_text())
    declared = tuple(Declared(n, t, b, tuple(d)) for n, t, b, d in saved["declared"])
    return Job(saved["index"], Program(saved["text"], declared), saved["seed"], fresh=True)


def compile_options(threads: int, bounds_check: bool) -> dict[str, Any]:
    import convdsl

    options: dict[str, Any] = {"threads": threads}
    if bounds_check:
        if "bounds_check" in inspect.signature(convdsl.compile_string).parameters:
            options["bounds_check"] = True
        else:
            print("note: convdsl.compile_string has no bounds_check; running without it")
    return options


def checking_malloc() -> None:
    """Workers start with glibc's debugging malloc (``MALLOC_CHECK_=3``): a write past the end
    of a buffer aborts when that buffer is freed, in the network that wrote it, instead of
    corrupting a later network's heap."""
    library = ctypes.util.find_library("c_malloc_debug")  # glibc 2.34 and later
    if library is None:
        print("note: no libc_malloc_debug; workers use the ordinary malloc")
        return
    os.environ["LD_PRELOAD"] = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), library]))
    os.environ["MALLOC_CHECK_"] = "3"  # read by workers spawned from now on, not by this process


def summary(results: dict[int, dict[str, Any]], seconds: float) -> str:
    counts = Counter(r["outcome"] for r in results.values())
    notes: dict[str, Counter[str]] = {outcome: Counter() for outcome in OUTCOMES}
    for r in results.values():
        if r["outcome"] == "crash":
            notes["crash"][r["detail"].split()[0]] += 1
        if r.get("alone"):
            notes[r["outcome"]]["only after other networks"] += 1
    rows = [f"{'outcome':<16}{'count':>7}"]
    for outcome in OUTCOMES:
        note = ", ".join(f"{k} {v}" for k, v in notes[outcome].most_common())
        rows.append(f"{outcome:<16}{counts[outcome]:>7}   {note}".rstrip())
    rows.append(f"{'total':<16}{len(results):>7}   in {seconds:.0f} s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="programs to run")
    parser.add_argument("--seed", type=int, default=0, help="which programs (reproducible)")
    parser.add_argument(
        "--out", type=Path, default=Path("soak-out"), help="failing programs go here"
    )
    parser.add_argument("--threads", type=int, default=2, help="the llvm backend's threads=")
    parser.add_argument(
        "--bounds-check",
        action="store_true",
        help="compile with bounds_check=True, if convdsl has it",
    )
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network")
    parser.add_argument(
        "--malloc-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="workers use glibc's checking malloc, if present (default: on)",
    )
    parser.add_argument("--replay", type=Path, help="run one saved .json case again, alone")
    args = parser.parse_args(argv)
    options = compile_options(args.threads, args.bounds_check)
    if args.malloc_check:
        checking_malloc()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    jobs = [replayed(args.replay)] if args.replay else generate(args.count, args.seed)
    print(f"{len(jobs)} program(s) made in {time.monotonic() - start:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="soak-logs-") as logs:
        soak = Soak(options, args.workers, args.timeout, args.out, Path(logs))
        try:
            soak.run(jobs, len(jobs))
        except KeyboardInterrupt:  # the summary of what ran is still worth having
            print("interrupted")
    print(summary(soak.results, time.monotonic() - start))
    return 0 if all(r["outcome"] == "ok" for r in soak.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
