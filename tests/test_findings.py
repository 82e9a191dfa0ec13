"""The seed documents' findings, reproduced from gpuscale's own runs (asserted on the numbers)."""

from __future__ import annotations

import pytest

from gpuscale.experiments.compare import CompareResult, PolicyRow, run_compare
from gpuscale.experiments.suite import SuiteConfig


def _row(result: CompareResult, scenario: str, policy: str) -> PolicyRow:
    (row,) = [r for r in result.rows_for(scenario) if r.policy == policy]
    assert row.failed == 0, row.errors
    return row


def _mean(row: PolicyRow, metric: str) -> float:
    value = row.estimates[metric].mean
    assert value is not None
    return value


@pytest.fixture(scope="module")
def thesis() -> CompareResult:
    suite = SuiteConfig(
        scenarios=["thesis-constant", "thesis-variable"],
        policies=["knative", "gpu-memory-thesis", "cpu-hpa", "gpu-util", "static-peak"],
        seeds=[1, 2],
    )
    return run_compare(suite, workers=2)


@pytest.fixture(scope="module")
def cpu_bound() -> CompareResult:
    suite = SuiteConfig(
        scenarios=["cpu-preprocess"], policies=["gpu-util", "multi-signal-gpu", "static-peak"], seeds=[1, 2]
    )
    return run_compare(suite, workers=2)


@pytest.mark.parametrize("scenario", ["thesis-constant", "thesis-variable"])
def test_in_flight_scaling_is_faster_and_gpu_memory_scaling_holds_fewer_gpus(
    thesis: CompareResult, scenario: str
) -> None:
    # The founding thesis: request-based (in-flight) autoscaling gives lower latency; GPU-memory
    # based autoscaling is more conservative with GPUs, at the cost of slower responses.
    knative = _row(thesis, scenario, "knative")
    memory = _row(thesis, scenario, "gpu-memory-thesis")
    assert _mean(knative, "latency_p95_ms") < _mean(memory, "latency_p95_ms")
    assert _mean(memory, "gpu_hours") < _mean(knative, "gpu_hours")
    # and per seed, not only on average
    for seed in thesis.seeds:
        (k,) = [r.summary for r in thesis.runs_for(scenario, "knative") if r.key.seed == seed]
        (m,) = [r.summary for r in thesis.runs_for(scenario, "gpu-memory-thesis") if r.key.seed == seed]
        assert k is not None and m is not None
        assert (k.latency_p95_ms or 0.0) < (m.latency_p95_ms or 0.0)
        assert m.gpu_hours < k.gpu_hours


def test_cpu_hpa_never_scales_out_on_a_gpu_bound_service_while_latency_degrades(
    thesis: CompareResult,
) -> None:
    # Seed 002: the pod's CPU stays low while its GPU is saturated, so a CPU-utilization HPA holds
    # one replica as the latency climbs far past what a GPU-signal policy achieves.
    for run in thesis.runs_for("thesis-variable", "cpu-hpa"):
        s = run.summary
        assert s is not None
        assert s.max_replicas == 1
        assert s.scale_events == 0
        assert (s.mean_cpu_util_pct or 0.0) < 80.0
        assert (s.mean_sm_util_pct or 0.0) > 80.0
    cpu = _row(thesis, "thesis-variable", "cpu-hpa")
    gpu = _row(thesis, "thesis-variable", "gpu-util")
    assert _mean(cpu, "latency_p95_ms") > 5 * _mean(gpu, "latency_p95_ms")
    assert _mean(cpu, "latency_p95_ms") > thesis.slo_ms["thesis-variable"]


def test_gpu_util_misses_the_slo_where_cpu_preprocessing_bounds_the_service(cpu_bound: CompareResult) -> None:
    # Seed 004: low SM utilization can coexist with high latency; only a policy that also watches
    # latency and queues scales out.
    gpu = _row(cpu_bound, "cpu-preprocess", "gpu-util")
    multi = _row(cpu_bound, "cpu-preprocess", "multi-signal-gpu")
    assert _mean(gpu, "mean_sm_util_pct") < 20.0
    assert _mean(gpu, "slo_attainment") < cpu_bound.slo_target
    assert _mean(multi, "slo_attainment") >= cpu_bound.slo_target
    assert _mean(multi, "mean_sm_util_pct") < 20.0


@pytest.mark.parametrize("fixture", ["thesis", "cpu_bound"])
def test_the_oracle_is_a_lower_bound_and_static_peak_meets_the_slo(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    result: CompareResult = request.getfixturevalue(fixture)
    for run in result.runs:
        s = run.summary
        assert s is not None
        oracle = result.oracles[(run.key.scenario, run.key.seed)]
        if s.slo_attainment >= result.slo_target:
            assert s.gpu_hours >= oracle.gpu_hours, run.key
        if run.key.policy == "static-peak":
            assert s.slo_attainment >= result.slo_target, run.key
