"""GPU sharing as timelines: MIG slices, time-slicing with interference, and the OOM kill of a pod on
an over-packed time-sliced GPU that still shows free places (seed 004).

Cold start on a node that already has the image and the weights (the initial pod put them there):
scheduling 1 + load 5 + warm-up 4 = 10 s (tests/conftest.py). An OOM-killed container restarts in
place after the kubelet's back-off (10 s, then 20 s, 40 s, ...), loading its weights again (5 + 4 s).
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.profiles import BUILTIN_PROFILES
from gpuscale.policies.base import Metric, SignalSpec
from gpuscale.sim.engine import simulate
from tests.conftest import make_scenario
from tests.test_engine import Scripted
from tests.test_nodes import _row

RESNET = BUILTIN_PROFILES["resnet50-a100-triton"]
BATCH1_S = RESNET.batch_latency_ms[0][1] / 1000.0


def _pool(sharing: dict[str, Any], gpus: int = 1, nodes: int = 1) -> dict[str, Any]:
    return {"gpu": "a100-80gb", "gpus_per_node": gpus, "nodes": nodes, "gpu_sharing": sharing}


def _model(**extra: Any) -> dict[str, Any]:
    # No batching delay: at light load a request's latency is one batch of 1.
    return {
        "profile": "resnet50-a100-triton",
        "jitter": "none",
        "cpu_ms_per_request": 0.0,
        "max_queue_delay_ms": 0.0,
        **extra,
    }


def test_an_over_packed_time_sliced_gpu_oom_kills_a_pod_while_it_shows_free_places() -> None:
    # One A100 80 GB advertised 4 times. Each pod's runtime preallocates half of the memory it sees
    # (the whole GPU: time-slicing does not partition memory), so two fit and a third cannot.
    # At t = 5 the deployment asks for 3 pods: both new pods land on the GPU (one of its 4 places
    # still shows free), load their weights from t = 6, and the younger one is OOM-killed at once.
    # It restarts after 10 s (t = 16, killed again), then after 20 s (t = 36, killed again).
    sc = make_scenario(
        duration_s=60,
        model=_model(allocator="preallocate", preallocate_fraction=0.5),
        cluster={"pools": [_pool({"kind": "time-slicing", "replicas_per_gpu": 4})]},
        workload={"kind": "poisson", "rate_rps": 20},
    )
    result = simulate(sc, Scripted(plan=((5.0, 3),)))
    s = result.summary
    assert s.oom_kills == 3  # at 6, 16 and 36
    row = _row(result, 20.0)
    # Every pod is placed (the GPU shows a free place), yet only two ever serve.
    assert (row["pending"], row["ready"], row["starting"]) == (0, 2, 1)
    assert max(result.timeline.column("ready")) == 2
    assert _row(result, 10.0)["ready"] == 1
    assert _row(result, 15.0)["ready"] == 2
    assert s.cold_starts == 1  # the pod that fits; the killed one never becomes Ready
    # Three pods on a quarter of a GPU each.
    assert _row(result, 20.0)["gpus_held"] == pytest.approx(0.75)


def test_the_same_pods_on_whole_gpus_never_oom() -> None:
    sc = make_scenario(
        duration_s=60,
        model=_model(allocator="preallocate", preallocate_fraction=0.5),
        cluster={"pools": [{"gpu": "a100-80gb", "gpus_per_node": 4, "nodes": 1}]},
        workload={"kind": "poisson", "rate_rps": 20},
    )
    result = simulate(sc, Scripted(plan=((5.0, 3),)))
    assert result.summary.oom_kills == 0
    assert _row(result, 15.0)["ready"] == 3


def test_a_growing_batch_pushes_the_youngest_pod_out_of_memory() -> None:
    # A caching allocator keeps its batch high-water mark: 2 pods of 1.5 + 30 GB fit an 80 GB GPU
    # idle (63 GB), but not once their batches have reached 34 requests between them. Under a load
    # that fills batches, the younger pod goes; on whole GPUs nothing does.
    def run(sharing: dict[str, Any] | None) -> Any:
        pool = _pool(sharing, gpus=2) if sharing else {"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}
        sc = make_scenario(
            duration_s=30,
            model=_model(weights_gb=30.0, activation_gb_per_request=0.5, max_batch_size=64),
            cluster={"pools": [pool]},
            control={"interval_s": 5, "initial_replicas": 2},
            workload={"kind": "poisson", "rate_rps": 8000},
        )
        return simulate(sc, Scripted(plan=())).summary

    shared = run({"kind": "time-slicing", "replicas_per_gpu": 2})
    assert shared.oom_kills >= 1
    assert shared.dropped > 0  # its requests die with it
    assert run(None).oom_kills == 0


def test_mig_slices_hold_one_pod_each_and_run_at_their_share_of_the_gpu() -> None:
    # One A100 80 GB cut into seven 1g.10gb slices: seven pods fit, the eighth waits; each batch
    # takes 7 x its whole-GPU time. Light load: the median request is one batch of 1.
    sc = make_scenario(
        duration_s=60,
        cluster={
            "pools": [_pool({"kind": "mig", "layout": ["1g.10gb"] * 7})],
            "mig_profile": "1g.10gb",
        },
        model=_model(),
        workload={"kind": "poisson", "rate_rps": 5},
        control={"interval_s": 5, "initial_replicas": 7},
    )
    result = simulate(sc, Scripted(plan=((5.0, 8),)))
    row = _row(result, 30.0)
    assert (row["ready"], row["pending"]) == (7, 1)
    assert row["gpus_held"] == pytest.approx(1.0)  # 7 x 1/7
    assert result.summary.latency_p50_ms == pytest.approx(7 * BATCH1_S * 1000, rel=0.01)
    assert result.summary.oom_kills == 0


def test_mig_speed_factor_and_larger_slices() -> None:
    sc = make_scenario(
        duration_s=30,
        cluster={
            "pools": [
                _pool({"kind": "mig", "layout": ["3g.40gb", "4g.40gb"], "speed_factor": {"3g.40gb": 2.0}})
            ],
            "mig_profile": "3g.40gb",
        },
        model=_model(),
        workload={"kind": "poisson", "rate_rps": 5},
    )
    result = simulate(sc, Scripted(plan=()))
    assert result.summary.latency_p50_ms == pytest.approx(2 * BATCH1_S * 1000, rel=0.01)


def test_time_slicing_interference_slows_every_pod_on_the_gpu() -> None:
    # Two pods share one GPU with interference 0.5: every batch takes 1 + 0.5 x (2 - 1) = 1.5 x.
    sc = make_scenario(
        duration_s=30,
        cluster={"pools": [_pool({"kind": "time-slicing", "replicas_per_gpu": 2, "interference": 0.5})]},
        model=_model(),
        workload={"kind": "poisson", "rate_rps": 5},
        control={"interval_s": 5, "initial_replicas": 2},
    )
    result = simulate(sc, Scripted(plan=()))
    assert result.summary.latency_p50_ms == pytest.approx(1.5 * BATCH1_S * 1000, rel=0.01)
    # The second pod leaves at t = 10: the survivor is alone, back to full speed.
    result = simulate(sc, Scripted(plan=((10.0, 1),)))
    assert result.summary.latency_p50_ms == pytest.approx(BATCH1_S * 1000, rel=0.01)


@pytest.mark.parametrize(
    ("cluster", "model", "key"),
    [
        ({"pools": [_pool({"kind": "mig", "layout": ["4g.40gb", "4g.40gb"]})], "mig_profile": "4g.40gb"}, None,
         "gpu_sharing"),
        ({"pools": [_pool({"kind": "mig", "layout": ["9g.90gb"]})], "mig_profile": "9g.90gb"}, None,
         "gpu_sharing"),
        ({"pools": [_pool({"kind": "mig", "layout": ["1g.10gb"]})]}, None, "mig_profile"),
        ({"pools": [_pool({"kind": "mig", "layout": ["1g.10gb"]})], "mig_profile": "2g.20gb"}, None,
         "mig_profile"),
        ({"pools": [_pool({"kind": "time-slicing", "replicas_per_gpu": 1})]}, None, "replicas_per_gpu"),
        ({"pools": [_pool({"kind": "time-slicing", "replicas_per_gpu": 2, "interference": -1})]}, None,
         "interference"),
        ({"pools": [{**_pool({"kind": "mig", "layout": ["1g.10gb"]}), "gpu": "t4"}], "mig_profile": "1g.10gb"},
         None, "gpu_sharing"),
        ({"pools": [_pool({"kind": "mig", "layout": ["1g.10gb"]})], "mig_profile": "1g.10gb"},
         _model(weights_gb=12.0), "mig_profile"),
        ({"pools": [_pool({"kind": "time-slicing", "replicas_per_gpu": 2})]}, _model(gpus_per_pod=2),
         "gpus_per_pod"),
    ],
)  # fmt: skip
def test_bad_sharing_settings_name_the_key(cluster: dict[str, Any], model: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_scenario(cluster=cluster, **({"model": model} if model else {}))
    assert key in str(err.value)


# -- GPU memory utilization as the exporter reports it ------------------------------------------------
def _memory_run(
    pool: dict[str, Any], mig: str | None, plan: tuple[tuple[float, int], ...], **model: Any
) -> Any:
    cluster: dict[str, Any] = {"pools": [pool]}
    if mig is not None:
        cluster["mig_profile"] = mig
    sc = make_scenario(
        duration_s=30,
        # weights + runtime with no activation memory: every pod holds the same, whatever its batches
        model=_model(allocator="exact", weights_gb=2.5, activation_gb_per_request=0.0, **model),
        cluster=cluster,
        workload={"kind": "poisson", "rate_rps": 20},
        control={"interval_s": 5, "initial_replicas": 2},
    )
    return sc, simulate(sc, Scripted(plan=plan))


def test_a_pod_on_a_mig_slice_reports_memory_against_its_slice() -> None:
    # 1.5 GB runtime + 2.5 GB weights = 4 GB: 40 % of a 1g.10gb slice (DCGM reports per GPU instance),
    # where the whole 80-GB GPU would show 5 %.
    sc, result = _memory_run(_pool({"kind": "mig", "layout": ["1g.10gb"] * 7}), "1g.10gb", ())
    held = sc.model.memory_at_batch_gb(0)
    slice_pct = 100.0 * held / 10.0
    assert _row(result, 20.0)["gpu_memory_util_pct"] == pytest.approx(slice_pct)
    assert result.summary.mean_gpu_memory_util_pct == pytest.approx(slice_pct)
    _, whole = _memory_run({"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}, None, ())
    assert whole.summary.mean_gpu_memory_util_pct == pytest.approx(100.0 * held / 80.0)
    assert slice_pct == pytest.approx(8 * whole.summary.mean_gpu_memory_util_pct)


def test_a_preallocating_runtime_on_a_mig_slice_takes_its_fraction_of_the_slice() -> None:
    # vLLM-style: 90 % of the memory the pod sees. On a 10-GB slice that is 9 GB (90 %), not 72 GB.
    sc = make_scenario(
        duration_s=20,
        model=_model(allocator="preallocate", preallocate_fraction=0.9),
        cluster={"pools": [_pool({"kind": "mig", "layout": ["1g.10gb"] * 7})], "mig_profile": "1g.10gb"},
        workload={"kind": "poisson", "rate_rps": 20},
    )
    spec = SignalSpec(Metric.GPU_MEMORY_USED_GB, 5.0)
    policy = Scripted(plan=(), signals=(spec,))
    result = simulate(sc, policy)
    used = policy.seen[-1].signals[spec].value
    assert used == pytest.approx(0.9 * 10.0)
    assert result.summary.mean_gpu_memory_util_pct == pytest.approx(90.0)


def test_time_sliced_pods_report_the_memory_of_every_pod_on_their_gpu() -> None:
    # Two pods on one time-sliced A100 80 GB hold 4 GB each: both report 8 GB used, 10 %. At t = 5 a
    # third pod is scheduled there; it loads its weights from t = 6 (after 1 s of scheduling) and is
    # Ready at 15, and from its load on the two serving pods see its memory too: 12 GB, 15 %.
    pool = _pool({"kind": "time-slicing", "replicas_per_gpu": 4})
    sc, result = _memory_run(pool, None, ((5.0, 3),))
    held = sc.model.memory_at_batch_gb(0)
    assert _row(result, 5.0)["gpu_memory_util_pct"] == pytest.approx(100.0 * 2 * held / 80.0)
    assert _row(result, 10.0)["ready"] == 2
    assert _row(result, 10.0)["gpu_memory_util_pct"] == pytest.approx(100.0 * 3 * held / 80.0)
    assert _row(result, 20.0)["ready"] == 3
    assert _row(result, 20.0)["gpu_memory_util_pct"] == pytest.approx(100.0 * 3 * held / 80.0)
    # The same two pods on whole GPUs each see their own 4 GB.
    _, whole = _memory_run({"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}, None, ())
    assert _row(whole, 5.0)["gpu_memory_util_pct"] == pytest.approx(100.0 * held / 80.0)
