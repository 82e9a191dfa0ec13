"""Compile the simulator's kernels into Numba's on-disk cache, once, at set-up.

``scripts/setup.sh`` runs ``python -m gpuscale.sim.warmup``. Without it, the first command after a
fresh install compiles the kernels in each of its worker processes (the request-level kernel about 25 s
of CPU, the token-level one about 12 s), all at the same time. Here each kernel compiles once, in its
own process, side by side; every later process loads the compiled code from the cache (``cache=True``
on every kernel; the cache sits beside the sources and is rebuilt when a source changes).

One short run of a built-in scenario per kernel compiles everything the catalog uses: a kernel is
compiled once per argument type, and every workload hands the kernels the same types (see
:func:`gpuscale.sim.dataplane.readonly`). With the cache already warm this takes about two seconds.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

WARM_RUNS: tuple[str, ...] = ("thesis-constant", "llm-azure-conv")
"""One built-in scenario per kernel: the request-level data plane, the token-level one."""

WARM_DURATION_S = 120.0


def warm_one(name: str) -> float:
    """Simulate ``WARM_DURATION_S`` of built-in scenario ``name``; returns the CPU seconds it took."""
    from gpuscale.experiments.catalog import builtin_scenario
    from gpuscale.policies.base import StaticPolicy
    from gpuscale.sim.engine import simulate

    start = time.process_time()
    scenario = builtin_scenario(name)
    short = scenario.model_copy(update={"duration_s": WARM_DURATION_S})
    simulate(short, StaticPolicy(scenario.control.initial_replicas), seed=1)
    return time.process_time() - start


def warm(names: tuple[str, ...] = WARM_RUNS) -> dict[str, float]:
    """Compile the kernels (each in its own process, in parallel); CPU seconds per run."""
    with ProcessPoolExecutor(max_workers=len(names)) as pool:
        return dict(zip(names, pool.map(warm_one, names), strict=True))


def main() -> None:
    start = time.perf_counter()
    took = warm()
    parts = ", ".join(f"{name} {cpu:.1f} s of CPU" for name, cpu in took.items())
    print(f"gpuscale: simulator kernels compiled and cached in {time.perf_counter() - start:.1f} s ({parts})")


if __name__ == "__main__":
    main()
