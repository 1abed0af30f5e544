"""The host CPU as the code generator sees it: name, feature string, fp32 vector width.

Detected once through llvmlite (which asks LLVM, which asks the CPU). Kernels size their vector
types from ``Target.lanes`` so one generator serves AVX-512 (16 lanes), AVX/AVX2 (8) and
everything else, aarch64 NEON included (4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm


@dataclass(frozen=True, slots=True)
class Target:
    triple: str
    cpu: str
    features: str  # LLVM's "+avx2,-avx512f,..." string
    lanes: int  # fp32 lanes of the widest useful vector register

    @property
    def has_fma(self) -> bool:
        return "+fma" in self.features.split(",") or self.triple.startswith("aarch64")


def lanes_for(features: str) -> int:
    """16 with AVX-512F, 8 with AVX/AVX2, 4 otherwise (SSE, NEON)."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in enabled:
        return 16
    if "avx" in enabled or "avx2" in enabled:
        return 8
    return 4


@cache
def host_target() -> Target:
    """The machine this process runs on."""
    from convdsl.backends.llvm.codegen import initialize

    initialize()
    features = llvm.get_host_cpu_features().flatten()
    return Target(
        triple=llvm.get_process_triple(),
        cpu=llvm.get_host_cpu_name(),
        features=features,
        lanes=lanes_for(features),
    )
