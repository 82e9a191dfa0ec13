"""The set-up's kernel warm-up compiles everything the catalog runs: every public kernel is compiled
for exactly one argument type, so one short run per kernel fills Numba's cache for all scenarios."""

from __future__ import annotations

import types

import pytest
from numba.core.registry import CPUDispatcher

from gpuscale.experiments.catalog import scenario_names
from gpuscale.sim import kernel, llm_kernel, telemetry, warmup


def _entry_points() -> dict[str, CPUDispatcher]:
    modules: list[types.ModuleType] = [kernel, llm_kernel, telemetry]
    return {
        f"{m.__name__}.{name}": fn
        for m in modules
        for name, fn in vars(m).items()
        if isinstance(fn, CPUDispatcher) and not name.startswith("_")
    }


@pytest.mark.parametrize("name", warmup.WARM_RUNS)
def test_the_warm_up_runs_are_built_in_scenarios(name: str) -> None:
    assert name in scenario_names()


def test_every_catalog_scenario_calls_each_kernel_with_one_argument_type() -> None:
    for name in scenario_names():
        warmup.warm_one(name)
    entry = _entry_points()
    assert {"gpuscale.sim.kernel.advance", "gpuscale.sim.llm_kernel.advance"} <= set(entry)
    several = {name: fn.signatures for name, fn in entry.items() if len(fn.signatures) > 1}
    assert not several, f"a second compile per process for these argument types: {several}"
