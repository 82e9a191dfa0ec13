"""Environment steps per second on one core on the KIS-S scenarios (issue 13's bar: >= 2,000).

    .venv/bin/python scripts/bench_env.py [--episodes N] [--repeats R]

Each scenario's environment (the default ``EnvConfig``: 30-s ticks, 15-s scrapes, delta actions)
steps through ``N`` episodes with seeded random actions, ``R`` times; the best pass is printed, in
wall-clock and in this process's CPU time (on a shared machine the CPU figure is the steadier one).
Beside it, measured in the same process over the same episodes, the data plane alone: the compiled
kernel's share of a step and the steps/s it would allow if everything around it took no time. The
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from gpuscale.rl import EnvConfig, ScalingEnv
from gpuscale.sim import kernel as K

SCENARIOS = ("kis-s-spike", "kis-s-ramp", "kis-s-periodic", "kis-s-random")


def episodes(env: ScalingEnv, n: int) -> int:
    """``n`` episodes with seeded random actions; the steps taken."""
    rng = np.random.default_rng(0)
    steps = 0
    for ep in range(n):
        env.reset(seed=ep)
        done = False
        while not done:
            _, _, done, _, _ = env.step(int(rng.integers(env.action_space.n)))
            steps += 1
    return steps


def bench(scenario: str, n: int, repeats: int) -> dict[str, float]:
    env = ScalingEnv(EnvConfig(scenarios=(scenario,)))
    episodes(env, 1)  # compile and warm up
    wall = cpu = 0.0
    steps = 0
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        steps = episodes(env, n)
        wall = max(wall, steps / (time.perf_counter() - w0))
        cpu = max(cpu, steps / (time.process_time() - c0))
    # The reference, in this process: the data plane alone over the same episodes.
    kernel = K.advance
    spent = [0.0]

    def timed(*args: Any) -> None:
        c = time.process_time()
        kernel(*args)
        spent[0] += time.process_time() - c

    K.advance = timed  # type: ignore[assignment]
    try:
        c0 = time.process_time()
        steps = episodes(env, n)
        total = time.process_time() - c0
    finally:
        K.advance = kernel
    return {"wall": wall, "cpu": cpu, "share": spent[0] / total, "cap": steps / spent[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'scenario':16} {'steps/s wall':>13} {'steps/s CPU':>12} {'data plane':>11} {'its cap':>9}")
    for scenario in SCENARIOS:
        f = bench(scenario, args.episodes, args.repeats)
        print(f"{scenario:16} {f['wall']:13,.0f} {f['cpu']:12,.0f} {f['share']:10.0%} {f['cap']:9,.0f}")


if __name__ == "__main__":
    main()
