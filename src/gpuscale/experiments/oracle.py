"""The oracle: a clairvoyant lower bound on the GPU-hours a scenario needs to meet its SLO.

Every compare run reports its GPU-hours as a multiple of the oracle's. The oracle knows the future load
and the shortest possible cold start, and holds, window by window, the fewest pods whose *measured*
capacity at the SLO covers that load. Nothing about the service comes from queueing formulas: the
capacity is measured with the simulator itself, so batching, routing, the CPU stage, queue limits and
timeouts all count.

Method
------
1. **Capacity at the SLO, measured.** ``k`` pods of the scenario's model with its serving settings are
   Ready at t = 0 under ``StaticPolicy(k)``, in a cluster with room for exactly them, and get a constant
   load long enough for :data:`MEASURE_REQUESTS` = 100,000 requests (at least 240 s, 50 × the SLO and
   100 × the longest batch; at most 6 h), then none until every request sent has its outcome. The
   attainment is then exact, not biased down by requests still in flight at the end (for the 70B LLM
   profile, 13.8-s batches and a 20-s SLO, those would be ~0.7 % of an hour's requests: most of a 1 %
   budget). Bisection finds the largest load at which the SLO attainment (answered within the SLO /
   sent) is at least ``slo_target``, to 1 % (open loop) or one user (closed loop). Seeds are fixed
   (:data:`MEASURE_SEED`), so capacity is a property of the service, the same for every run seed, and
   is cached per (service, k, target) in the process. Each pod gets the GPU it gets in the scenario:
   whole GPUs of the model's type; or, where pools hand out MIG slices or time-sliced GPUs, the
   scenario's own pools with their sharing, the k pods filling them first-fit as the cluster does. A
   pod on a 1g.10gb slice then runs each batch 7 x slower and has 10 GB, and time-sliced pods slow
   each other by the pool's interference, so the capacity is that of the pods the policies run (a
   whole GPU would overstate a 1g slice's by 7 x or more: the SLO does not stretch with the batches).
   A measurement run scrapes and ticks every 300 s: a static fleet's outcomes do not depend on either
   (the data plane advances in chunk-invariant pieces), and 1-s scrapes made a probe 20× slower.

   The load has the scenario's arrival process: Poisson requests/s (a gamma stream with the scenario's
   ``cv`` for gamma workloads; Poisson for MMPP and traces), or for closed-loop workloads a number of
   users with the scenario's think time. Measuring users directly replaces converting them to a rate
   with ``users / (think + light-load response)``, which over-states the rate (100 users thinking 1.5 s
   on a 65-ms service send at most 64 requests/s, but 57 at 250-ms responses) and treats a finite
   population as Poisson; both would push a lower bound *up*.

   Capacity by pod count: k = 1..8 are measured one by one, powers of two above (16, 32, ... and the
   cluster's limit), until the peak load is covered; per-replica capacity is interpolated linearly in k
   in between. Under least-outstanding routing pods pool their queues (one M/D/1 pod meets a 5-service-
   time SLO at 56 % utilisation, pooled pods at more), so per-replica capacity is made non-decreasing
   (running maximum). Under random or round-robin routing each pod keeps its own queue and the measured
   values stand: with closed-loop users per-replica capacity even falls (one KIS-S pod serves 28 users,
   four do not serve 112), because a user's next request goes to another pod and a pod loses the calming
   feedback of a small population of its own. Total capacity never falls with k.

2. **The true future load**, in windows of :data:`WINDOW_S` = 10 s:

   * Poisson and gamma workloads: the mean of the workload's own rate (its intensity, with this seed's
     random levels) over the window. Not the realised count: the capacity was measured on a stream
     with the same Poisson fluctuations, so binning realised arrivals would count that burstiness twice
     (a 10-s count varies by ±1 % at 1,000 requests/s and by ±7 % at 20; every window that fluctuates
     past a capacity step would buy a pod the measured capacity already paid for).
   * MMPP and trace replay: the realised arrivals of this seed (the MMPP state is hidden; a trace is its
     own truth), counted over the 60 s centred on the window: ±6 % spread at 20 requests/s instead of
     ±14 %, and no more smoothing than a real change survives.
   * Closed-loop workloads: the time-weighted mean number of users in the window.

3. **Schedule.** Each window first gets the fewest pods whose capacity covers its load (0 with no load),
   capped at what the cluster holds (no policy can hold more). That meets the target in *every* window;
   a policy need only meet it over the run (the compare's "meets the SLO"), and can spend the surplus
   of lightly loaded windows on running others hot: on cpu-preprocess, cpu-hpa scales up a minute late
   on each step of a ramp, runs one pod at 75 requests/s (its capacity at the SLO: 64) and still ends
   above 99 %, on fewer GPU-hours than the per-window schedule. So the oracle spends the same budget,
   optimistically: it drops a pod from a window at the edge of the pod's run (starting it later or
   stopping it sooner), cheapest estimated misses per pod-second first, while the estimated requests
   answered within the SLO stay at least ``slo_target`` of all requests. The estimates are upper
   bounds, so the budget is never under-stated: k pods' attainment at a load is the lowest measured at
   or below that load (the bisection's probes, plus probes at 2, 5, 10, 20, 35, 50, 75 and 100 % above
   capacity up to what k + 1 pods carry, stopping below 50 %), and a window's requests are its load ×
   its length (closed loop: users × the requests per user-second measured at one pod's capacity). Two
   limits keep it to running hot: no window is taken below an estimated 50 % (a collapsed queue's
   backlog spills into the next windows, which a per-window estimate misses), and the last pod of a
   loaded window stays (switching the service off for the last 10 s is not what a budget is for).

4. **Charge.** Each added pod starts exactly the minimum cold start before it is needed
   (:func:`min_cold_start_s`: scheduling + load + warm-up minima with the node caches warm; image pull
   and download only where the startup config says nodes do not keep them) and holds its GPUs while it
   starts. A pod idle for less than one cold start between two needs is kept rather than restarted (the
   offline optimum of keep-or-restart, pod by pod); otherwise GPUs are freed at once. Pods Ready at
   t = 0 cost nothing to start, as a scenario's initial replicas cost a policy nothing. Pods fill the
   node pools first-fit in their order, as the simulator places them (a pool under a node autoscaler
   at its largest size), and each is charged as the simulator charges it: GPU-hours = pod-seconds ×
   its GPUs (``gpus_per_pod``; a MIG slice's compute slices / 7; 1 / replicas of a time-sliced GPU) /
   3600, at its pool's price per GPU-hour (under a node autoscaler, where clouds bill nodes, the
   pool's node price per GPU: a pod's share of a perfectly packed node, a lower bound on the bill).

Why it is a lower bound, and where not strictly: the oracle never waits for a metric or a new node,
never starts a pod late or early, never drains, is charged the fastest cold start, and spends the miss
budget at optimistic prices. But its attainment estimates come from steady runs, and a policy that overloads
pods briefly after a quiet spell starts from short queues, which a steady run never does; the 50 %
floor and the kept last pod forgo a little; and capacity is known to about 1 %, so a static fleet
whose load sits within 1 % of a capacity step can land on either side. Traffic burstier than Poisson
(gamma with cv > 1, MMPP, traces) needs more than its Poisson capacity suggests, which only loosens
the bound.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuscale.config.scenario import (
    Duration,
    LogNormal,
    NodePool,
    Scenario,
    StartupConfig,
    Uniform,
    scenario_from_dict,
)
from gpuscale.config.sharing import MigLayout, TimeSlicing, mig_profile
from gpuscale.config.workload import (
    ClosedLoopWorkload,
    GammaWorkload,
    MmppWorkload,
    PoissonWorkload,
    TraceWorkload,
)
from gpuscale.policies.base import StaticPolicy
from gpuscale.sim.engine import simulate
from gpuscale.sim.serving import interpolate_batch_latency
from gpuscale.sim.workload import UserSchedule, Workload, build_workload

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

WINDOW_S = 10.0
"""Length of the oracle's schedule windows (seconds)."""

REALISED_SPAN_S = 60.0
"""Span over which realised arrivals (MMPP, traces) are counted for one window, centred on it."""

MEASURE_SEED = 1
"""Seed of every capacity measurement run."""

MEASURE_REQUESTS = 100_000
"""Requests a measurement run aims to send, so that a 1 % tail is counted from ~1,000 misses."""

MEASURE_MIN_S = 240.0
MEASURE_MAX_S = 6 * 3600.0
"""Bounds of one measurement run's loaded time (see :func:`_measure_s`)."""

PRECISION = 0.01
"""Relative precision of the open-loop capacity bisection."""

EXACT_UP_TO = 8
"""Pod counts measured one by one; above, powers of two (and the cluster's limit) are measured."""

OVERLOAD_STEPS = (0.02, 0.05, 0.10, 0.20, 0.35, 0.50, 0.75, 1.00)
"""Loads above capacity (as fractions of it) at which k pods' attainment is probed for the budget."""

OVERLOAD_FLOOR = 0.5
"""Overload probes stop at the first attainment below this (higher loads only do worse), and the
oracle takes no window's estimated attainment below it."""

_PROBE_TICK_S = 300.0
"""Scrape and control interval of a measurement run (the most a scenario allows)."""

_SUBSAMPLES = 20
"""Points per window at which a rate shape is averaged (every 0.5 s in a 10-s window)."""

Curve = tuple[tuple[float, float], ...]
"""(load, SLO attainment) points of k pods, in increasing load."""


# -- capacity at the SLO ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Capacity:
    """What ``k`` pods carry at the SLO: ``load`` in the workload's unit (requests/s or users), the
    request rate ``rps`` that load sends, and the probes the bisection made."""

    load: float
    rps: float
    probes: Curve


_CAPACITY: dict[tuple[str, int, float], _Capacity] = {}
_OVERLOAD: dict[tuple[str, int, float], Curve] = {}


def min_cold_start_s(startup: StartupConfig) -> float:
    """The shortest possible cold start on a node that already holds the image and the weights.

    Scheduling, loading to the GPU and warm-up always happen; the image pull and the weights download
    count only when the startup config says a node does not keep them (``image_cache`` /
    ``model_cache`` false), since then every start pulls again. A phase's minimum is its fixed value,
    the low end of a uniform range, or 0 for a lognormal (whose support starts at 0).
    """
    total = _lowest(startup.scheduling_s) + _lowest(startup.model_load_s) + _lowest(startup.warmup_s)
    if not startup.image_cache:
        total += _lowest(startup.image_pull_s)
    if not startup.model_cache:
        total += _lowest(startup.model_download_s)
    return total


def _lowest(d: Duration) -> float:
    if isinstance(d, Uniform):
        return float(d.uniform[0])
    if isinstance(d, LogNormal):
        return 0.0
    return float(d)


# -- LLM pods (the token-level engine): what a request asks of an iteration ----------------------------
_MIX_SAMPLES = 4096


def _token_mix(scenario: Scenario) -> tuple[FloatArray, FloatArray]:
    """Prompt and output lengths of the scenario's requests: a sample of its token mix (the probe
    workload's ``tokens:`` block, see :func:`with_token_mix`)."""
    from gpuscale.sim.workload import token_source

    src = token_source(scenario.workload, seed=MEASURE_SEED, source=scenario.name)
    prompt, output = src.take(_MIX_SAMPLES)
    return prompt.astype(np.float64), output.astype(np.float64)


def _llm_request_s(scenario: Scenario, slowdown: float, *, full: bool) -> float:
    """One long request (99th-percentile prompt and output) alone (``full=False``) or in a full batch
    of ``max_num_seqs`` requests like it (``full=True``): prefill, then an iteration per output token."""
    llm = scenario.model.llm
    assert llm is not None
    prompt, output = _token_mix(scenario)
    p, o = float(np.quantile(prompt, 0.99)), float(np.quantile(output, 0.99))
    batch = llm.max_num_seqs if full else 1
    prefill = llm.beta0_ms + llm.beta_prefill_ms_per_token * p * batch
    step = llm.beta0_ms + batch * (
        llm.beta_decode_ms_per_token + (p + o) * llm.beta_kv_ms_per_1k_tokens / 1000.0
    )
    return slowdown * (prefill + o * step) / 1000.0


def _llm_max_rps(scenario: Scenario, slowdown: float) -> float:
    """Requests/s of one saturated LLM pod at the scenario's mix: its token work per request with the
    iteration's fixed cost shared by a full batch (an upper bound: no KV-cache limit, no preemption)."""
    llm = scenario.model.llm
    assert llm is not None
    prompt, output = _token_mix(scenario)
    per_request_ms = llm.beta_prefill_ms_per_token * float(prompt.mean()) + float(output.mean()) * (
        llm.beta_decode_ms_per_token + llm.beta0_ms / llm.max_num_seqs
    )
    return 1000.0 / (slowdown * per_request_ms)


def with_token_mix(scenario: Scenario, base_dir: Path | None = None, source: str = "scenario") -> Scenario:
    """``scenario`` with its requests' token lengths as distributions: a trace's token columns become
    empirical distributions (prompt and output drawn independently), so capacity is measured under the
    scenario's own token mix with a Poisson stream. Other scenarios come back unchanged."""
    w = scenario.workload
    if scenario.model.llm is None or not isinstance(w, TraceWorkload):
        return scenario
    tokens = w.tokens
    if tokens is not None and tokens.prompt is not None and tokens.output is not None:
        return scenario
    from gpuscale.config.workload import EmpiricalTokens, TokenDist, TokensConfig
    from gpuscale.sim.workload import load_trace

    trace = load_trace(w.path, base_dir=base_dir, source=source)
    parts: dict[str, TokenDist] = {}
    for which, column in (("prompt", trace.context_tokens), ("output", trace.generated_tokens)):
        given = getattr(tokens, which) if tokens is not None else None
        if given is not None:
            parts[which] = given
            continue
        if column is None:
            return scenario  # the engine refuses it, naming the key, when the run starts
        values, counts = np.unique(np.asarray(column, dtype=np.int64), return_counts=True)
        parts[which] = TokenDist(
            empirical=EmpiricalTokens(values=[int(v) for v in values], weights=[float(c) for c in counts])
        )
    mix = TokensConfig(prompt=parts["prompt"], output=parts["output"])
    return scenario.model_copy(update={"workload": w.model_copy(update={"tokens": mix})})


def _max_rps_per_pod(scenario: Scenario, slowdown: float = 1.0) -> float:
    """Throughput of one saturated pod whose batches take ``slowdown`` x the profile's time: its best
    batch rate, or its CPU workers', whichever is lower."""
    m = scenario.model
    if m.llm is not None:
        return _llm_max_rps(scenario, slowdown)
    lat = interpolate_batch_latency(m.batch_latency_ms, m.max_batch_size) * slowdown
    sizes = np.arange(1, m.max_batch_size + 1, dtype=np.float64)
    gpu = float(np.max(sizes / lat[1:]))
    cpu = m.cpu_workers / (m.cpu_ms_per_request / 1000.0) if m.cpu_ms_per_request > 0 else math.inf
    return min(gpu, cpu)


def _batch_s(scenario: Scenario, size: int) -> float:
    m = scenario.model
    if m.llm is not None:  # an LLM pod has no batches: a long request, alone or in a full batch
        return _llm_request_s(scenario, 1.0, full=size > 1)
    return float(interpolate_batch_latency(m.batch_latency_ms, m.max_batch_size)[size])


def _longest_batch_s(scenario: Scenario, slowdown: float = 1.0) -> float:
    if scenario.model.llm is not None:
        return _llm_request_s(scenario, slowdown, full=True)
    return _batch_s(scenario, scenario.model.max_batch_size) * slowdown


def _measure_s(scenario: Scenario, rps: float, slowdown: float = 1.0) -> float:
    """Loaded time of a measurement run at ``rps``: :data:`MEASURE_REQUESTS` requests, and long against
    the SLO and the batch time, within [4 min, 6 h].

    The tail fraction is noisy: 240 s of an M/D/1 pod at 56 requests/s is 13,000 requests and ~130
    misses, and the capacity found from it is off by ±3 %; 100,000 requests bring that under 1 %. A fast
    service reaches the count anyway (240 s of 1,166 requests/s is 280,000); the 70B LLM, at 1.8
    requests/s per pod, stops at 6 h (39,000) and 100 batches of 13.8 s are far fewer.
    """
    slo_s = scenario.slo.latency_ms / 1000.0
    # An LLM pod's "batch" is a long request in a full batch, minutes at most: ten of them will do.
    batches = 10.0 if scenario.model.llm is not None else 100.0
    floor = max(MEASURE_MIN_S, 50.0 * slo_s, batches * _longest_batch_s(scenario, slowdown))
    wanted = MEASURE_REQUESTS / rps if rps > 0 else floor
    return min(MEASURE_MAX_S, max(floor, wanted))


def _drain_s(scenario: Scenario, slowdown: float = 1.0) -> float:
    """Time after the load stops by which every request sent has its outcome: the client timeout, a
    full CPU backlog, and a batch started just before the timeout plus the one that then drops it."""
    m = scenario.model
    if m.llm is not None:  # no client timeout: a full pod's queue runs to completion, a batch at a time
        batches = math.ceil(scenario.serving.queue_capacity / m.llm.max_num_seqs) + 1
        return (batches + 1) * _longest_batch_s(scenario, slowdown) + 1.0
    cpu_backlog = scenario.serving.queue_capacity * (m.cpu_ms_per_request / 1000.0) / m.cpu_workers
    return scenario.serving.timeout_s + cpu_backlog + 2.0 * _longest_batch_s(scenario, slowdown) + 1.0


# -- the GPU each pod gets ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Slot:
    """The place of the k-th pod in the cluster (pods fill the pools first-fit, in order)."""

    pool: NodePool
    gpus: float
    """GPUs it is charged for: ``gpus_per_pod`` on whole GPUs, compute slices / 7 on a MIG slice,
    1 / replicas on a time-sliced GPU (as the simulator charges a pod)."""
    usd_per_gpu_hour: float
    """The pool's GPU price; under a node autoscaler, where the bill is for nodes, its node price per
    GPU (a spot node at 0.66 $/h bills 0.66, not the GPU's 2.21 on demand)."""


def _pool_nodes(scenario: Scenario, pool: NodePool) -> int:
    """Nodes the pool can have: its fixed size, or its largest under a node autoscaler."""
    return pool.max_size if scenario.cluster.node_autoscaler.kind != "none" else pool.nodes


def _slots(scenario: Scenario) -> list[_Slot]:
    """Every pod place of the cluster at its largest, in first-fit order, up to ``control.max_pods``."""
    c = scenario.cluster
    gpus_per_pod = scenario.model.gpus_per_pod
    node_billed = c.node_autoscaler.kind != "none"
    slots: list[_Slot] = []
    for pool in c.pools:
        per_node = c.pods_per_node(pool, gpus_per_pod)
        sharing = pool.gpu_sharing
        gpus: float = float(gpus_per_pod)
        if isinstance(sharing, MigLayout):
            profile = mig_profile(pool.gpu, c.mig_profile or "")
            gpus = profile.compute_slices / 7.0 if profile is not None else 1.0
        elif isinstance(sharing, TimeSlicing):
            gpus = 1.0 / sharing.replicas_per_gpu
        price = pool.node_price / pool.gpus_per_node if node_billed else pool.price
        slots += [_Slot(pool, gpus, price)] * (per_node * _pool_nodes(scenario, pool))
    return slots[: scenario.control.max_pods]


def _allocation(scenario: Scenario, replicas: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Node pools that give ``replicas`` pods the GPUs they get in the scenario's cluster, and each
    pod's batch-time multiplier there.

    Whole GPUs: ``replicas`` nodes of the model's GPUs, every pod at full speed. MIG slices and
    time-slicing: the scenario's own pools, in order and with their sharing, with just the nodes the
    first ``replicas`` pods fill first-fit. A MIG pod runs at its slice's speed (1g of 7: 7 x the batch
    time); time-sliced pods fill a GPU up to its replicas and slow each other by the interference
    (4 pods at 0.2: 1.6 x), as they do in the scenario when the cluster places that many.
    """
    c = scenario.cluster
    m = scenario.model
    if not c.shared:
        whole = {"name": "capacity", "gpu": m.gpu, "gpus_per_node": m.gpus_per_pod, "nodes": replicas}
        return [whole], [1.0] * replicas
    pools: list[dict[str, Any]] = []
    speeds: list[float] = []
    usable = [pool for pool in c.pools if c.pods_per_node(pool, m.gpus_per_pod) > 0]
    for i, pool in enumerate(usable):
        left = replicas - len(speeds)
        if left <= 0:
            break
        per_node = c.pods_per_node(pool, m.gpus_per_pod)
        nodes = math.ceil(left / per_node)
        if i + 1 < len(usable):
            nodes = min(nodes, _pool_nodes(scenario, pool))
        if nodes <= 0:
            continue
        data = pool.model_dump(mode="json")
        data.update(
            name=f"capacity-{i + 1}",
            nodes=nodes,
            min_nodes=0,
            max_nodes=None,
            spot_interruptions_per_node_hour=0.0,
            spot_interruptions_at_s=[],
        )
        pools.append(data)
        sharing = pool.gpu_sharing
        take = min(left, nodes * per_node)
        if isinstance(sharing, MigLayout):
            profile = mig_profile(pool.gpu, c.mig_profile or "")
            assert profile is not None  # pods_per_node > 0
            speeds += [sharing.speed(profile)] * take
        elif isinstance(sharing, TimeSlicing):
            r = sharing.replicas_per_gpu
            for first in range(0, take, r):
                on_gpu = min(r, take - first)
                speeds += [1.0 + sharing.interference * (on_gpu - 1)] * on_gpu
        else:
            speeds += [1.0] * take
    return pools, speeds


def _allocation_text(scenario: Scenario) -> str:
    """How the oracle measures a pod that does not get a whole GPU (empty on whole GPUs)."""
    c = scenario.cluster
    if not c.shared:
        return ""
    parts: list[str] = []
    for pool in c.pools:
        sharing = pool.gpu_sharing
        if c.pods_per_node(pool, scenario.model.gpus_per_pod) == 0:
            continue
        if isinstance(sharing, MigLayout):
            profile = mig_profile(pool.gpu, c.mig_profile or "")
            assert profile is not None
            parts.append(
                f"a {profile.name} MIG slice of an {pool.gpu} in pool {pool.name} ({profile.memory_gb:g} GB, "
                f"batch times x {sharing.speed(profile):.3g}, charged as {profile.compute_slices}/7 of a GPU)"
            )
        elif isinstance(sharing, TimeSlicing):
            r = sharing.replicas_per_gpu
            parts.append(
                f"a time-sliced {pool.gpu} in pool {pool.name}, up to {r} pods a GPU sharing its memory "
                f"(batch times x (1 + {sharing.interference:g} x the other pods on it), charged as 1/{r} "
                "of a GPU)"
            )
        else:
            parts.append(f"a whole {pool.gpu} in pool {pool.name}")
    return (
        " Pods do not get whole GPUs here, so capacity is measured on the GPU each pod gets, its pools "
        "filled first-fit as the cluster fills them: " + "; ".join(parts) + "."
    )


@dataclass(frozen=True)
class _Probe:
    """Runs the measurement scenario of one service: ``k`` Ready pods under a constant load."""

    scenario: Scenario

    def _workload(self, load: float, until_s: float) -> dict[str, Any]:
        w = self.scenario.workload
        levels = [[0.0, load], [until_s, 0.0]]
        if isinstance(w, ClosedLoopWorkload):
            return {
                "kind": "closed-loop",
                "users": {"kind": "step", "levels": levels},
                "think_time_s": list(w.think_time_s),
            }
        tokens = {}
        if self.scenario.model.llm is not None and getattr(w, "tokens", None) is not None:
            tokens = {"tokens": w.tokens.model_dump(mode="json", exclude_none=True)}  # type: ignore[union-attr]
        if isinstance(w, GammaWorkload):
            return {"kind": "gamma", "cv": w.cv, "rate": {"kind": "step", "levels": levels}, **tokens}
        return {"kind": "poisson", "rate": {"kind": "step", "levels": levels}, **tokens}

    def _rps_guess(self, load: float) -> float:
        """Requests/s of ``load``; for users, their most (think + a light-load response per request)."""
        w = self.scenario.workload
        if not isinstance(w, ClosedLoopWorkload):
            return load
        m = self.scenario.model
        light_s = (
            m.cpu_ms_per_request / 1000.0 + _batch_s(self.scenario, 1) * _allocation(self.scenario, 1)[1][0]
        )
        return load / (0.5 * (w.think_time_s[0] + w.think_time_s[1]) + light_s)

    def fingerprint(self) -> str:
        """Everything a measurement run depends on, as text: the cache key of a service."""
        s = self.scenario
        return json.dumps(
            {
                "slo": s.slo.model_dump(mode="json"),
                "model": s.model.model_dump(mode="json"),
                "serving": s.serving.model_dump(mode="json"),
                "workload": self._workload(1.0, 1.0),
                "cluster": s.cluster.model_dump(mode="json") if s.cluster.shared else None,
                "measure": [MEASURE_REQUESTS, MEASURE_MIN_S, MEASURE_MAX_S],
                "drain_s": _drain_s(s),
                "seed": MEASURE_SEED,
            },
            sort_keys=True,
        )

    def run(self, replicas: int, load: float) -> tuple[float, float]:
        """SLO attainment and request rate of ``replicas`` pods under ``load``."""
        s = self.scenario
        m = s.model
        pools, speeds = _allocation(s, replicas)
        slowdown = max(speeds, default=1.0)
        measure_s = _measure_s(s, self._rps_guess(load), slowdown)
        name = f"{s.name}.capacity-{replicas}"  # a safe name: it would name output folders
        data = {
            "name": name,
            "duration_s": measure_s + _drain_s(s, slowdown),
            "seed": MEASURE_SEED,
            "slo": s.slo.model_dump(mode="json"),
            "workload": self._workload(load, measure_s),
            "model": m.model_dump(mode="json"),
            "serving": s.serving.model_dump(mode="json"),
            "cluster": {"pools": pools, "mig_profile": s.cluster.mig_profile},
            "telemetry": {"scrape_interval_s": _PROBE_TICK_S},
            "control": {"interval_s": _PROBE_TICK_S, "initial_replicas": replicas, "max_pods": replicas},
        }
        summary = simulate(scenario_from_dict(data, name), StaticPolicy(replicas)).summary
        # Every request is decided by the end (the drain); should one not be, it counts neither way.
        decided = summary.requests - summary.in_flight
        met = round(summary.slo_attainment * summary.requests)
        attainment = met / decided if decided > 0 else 1.0
        return attainment, summary.requests / measure_s


def _largest_rate(holds: Callable[[float], bool], ceiling: float) -> float:
    """The largest rate in (0, ceiling) at which ``holds``, to :data:`PRECISION`, by geometric bisection.

    ``ceiling`` (the pods' saturated throughput) fails by construction: above it the queue grows without
    bound. The first probe is at 80 % of it, near where batching services sit at the SLO; from
    [0.8, 1] × ceiling five more probes reach 1 % (the log-ratio halves from 0.22 to 0.007).
    """
    lo, hi = 0.8 * ceiling, ceiling
    while not holds(lo):
        hi = lo
        lo /= 2.0
        if lo < ceiling * 1e-4:
            return 0.0
    while hi > lo * (1.0 + PRECISION):
        mid = math.sqrt(lo * hi)
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _largest_users(holds: Callable[[int], bool], ceiling: int) -> int:
    """The largest user count in [0, ceiling) at which ``holds`` (0 always does), by bisection."""
    lo, hi = 0, ceiling
    while hi - lo > max(1, math.floor(PRECISION * lo)):
        mid = (lo + hi) // 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _measure(scenario: Scenario, replicas: int, slo_target: float) -> _Capacity:
    """Cached capacity of ``replicas`` pods at the SLO (module docstring, step 1)."""
    if replicas <= 0:
        return _Capacity(0.0, 0.0, ())
    probe = _Probe(scenario)
    key = (probe.fingerprint(), replicas, slo_target)
    cached = _CAPACITY.get(key)
    if cached is not None:
        return cached
    ceiling = sum(_max_rps_per_pod(scenario, slowdown) for slowdown in _allocation(scenario, replicas)[1])
    seen: dict[float, tuple[float, float]] = {}

    def holds(load: float) -> bool:
        seen[load] = probe.run(replicas, load)
        return seen[load][0] >= slo_target

    workload = scenario.workload
    if isinstance(workload, ClosedLoopWorkload):
        # Past ceiling × (longest think + SLO) users the mean response would have to exceed the SLO for
        # the pods to keep up (Little's law on the user cycle), so that count fails.
        slo_s = scenario.slo.latency_ms / 1000.0
        users_ceiling = math.ceil(ceiling * (workload.think_time_s[1] + slo_s)) + 1
        load = float(_largest_users(lambda u: holds(float(u)), users_ceiling))
        rps = seen[load][1] if load in seen else 0.0
    else:
        load = rps = _largest_rate(holds, ceiling)
    probes = tuple(sorted((x, att) for x, (att, _) in seen.items()))
    result = _Capacity(load, rps, probes)
    _CAPACITY[key] = result
    return result


def _overload(scenario: Scenario, replicas: int, slo_target: float) -> Curve:
    """Cached attainment of ``replicas`` pods at loads above their capacity, up to what one more pod
    carries (a window only ever drops one pod): :data:`OVERLOAD_STEPS` of the capacity, stopping at the
    first attainment below :data:`OVERLOAD_FLOOR`. For the 70B LLM at 3 pods (5.0 requests/s; 4 pods:
    6.7) that is +2, 5, 10, 20 %: four 6-h runs."""
    probe = _Probe(scenario)
    key = (probe.fingerprint(), replicas, slo_target)
    cached = _OVERLOAD.get(key)
    if cached is not None:
        return cached
    base = _measure(scenario, replicas, slo_target).load
    limit = max(_measure(scenario, replicas + 1, slo_target).load, base)
    closed = isinstance(scenario.workload, ClosedLoopWorkload)
    points: list[tuple[float, float]] = []
    for step in OVERLOAD_STEPS:
        load = float(math.ceil(base * (1.0 + step))) if closed else base * (1.0 + step)
        if load > limit:
            break
        if points and load <= points[-1][0]:
            continue
        attainment, _ = probe.run(replicas, load)
        points.append((load, attainment))
        if attainment < OVERLOAD_FLOOR:
            break
    _OVERLOAD[key] = tuple(points)
    return _OVERLOAD[key]


def clear_cache() -> None:
    """Forget every measured capacity (for tests, or a long-lived process whose simulator changed)."""
    _CAPACITY.clear()
    _OVERLOAD.clear()


def capacity_at_slo(scenario: Scenario, replicas: int, slo_target: float = 0.99) -> float:
    """Requests/s that ``replicas`` always-Ready pods of the scenario's service answer with at least
    ``slo_target`` of them within the SLO, measured with the simulator (module docstring, step 1).

    Open-loop scenarios: the largest constant Poisson (or gamma) rate. Closed-loop scenarios: the
    request rate sent by the most users that meet the target (:func:`users_at_slo`).
    """
    return _measure(scenario, replicas, slo_target).rps


def users_at_slo(scenario: Scenario, replicas: int, slo_target: float = 0.99) -> int:
    """Closed-loop scenarios: the most users (with the scenario's think time) that ``replicas`` pods
    serve with at least ``slo_target`` of the requests within the SLO."""
    if not isinstance(scenario.workload, ClosedLoopWorkload):
        raise ValueError(f"scenario {scenario.name!r} is open-loop; use capacity_at_slo")
    return round(_measure(scenario, replicas, slo_target).load)


class _CapacityTable:
    """Capacity by pod count for one scenario, measured lazily (module docstring, step 1)."""

    def __init__(self, scenario: Scenario, slo_target: float, k_max: int) -> None:
        self.scenario = scenario
        self.slo_target = slo_target
        # Time-sliced pods slow each other down: their per-replica capacity may truly fall with k.
        interferes = any(
            isinstance(p.gpu_sharing, TimeSlicing) and p.gpu_sharing.interference > 0
            for p in scenario.cluster.pools
        )
        self.pooled = scenario.serving.routing == "least-outstanding" and not interferes
        self.measured: dict[int, _Capacity] = {}
        exact = list(range(1, min(EXACT_UP_TO, k_max) + 1))
        powers = [2**i for i in range(4, 31) if 2**i < k_max]
        self.sizes = exact + [k for k in [*powers, k_max] if k > EXACT_UP_TO]

    def cover(self, peak_load: float) -> None:
        """Measure sizes in order until the table carries ``peak_load`` or the cluster's limit is reached."""
        for k in self.sizes:
            self.measure(k)
            if self.capacities()[-1] >= peak_load:
                return

    def measure(self, k: int) -> _Capacity:
        if k not in self.measured:
            self.measured[k] = _measure(self.scenario, k, self.slo_target)
        return self.measured[k]

    def _per_replica(self, values: list[float]) -> FloatArray:
        per = np.array(values, dtype=np.float64)
        return np.maximum.accumulate(per) if self.pooled else per

    def per_replica_at(self, k: int) -> tuple[float, float]:
        """Per-replica load capacity and request rate of ``k`` pods."""
        ks = sorted(self.measured)
        x = np.array(ks, dtype=np.float64)
        load = self._per_replica([self.measured[j].load / j for j in ks])
        rps = self._per_replica([self.measured[j].rps / j for j in ks])
        return float(np.interp(k, x, load)), float(np.interp(k, x, rps))

    def capacities(self) -> FloatArray:
        """Load capacity of k = 1 .. the largest measured size (index k − 1), non-decreasing."""
        ks = sorted(self.measured)
        per = self._per_replica([self.measured[j].load / j for j in ks])
        k_all = np.arange(1, ks[-1] + 1, dtype=np.float64)
        total = k_all * np.interp(k_all, np.array(ks, dtype=np.float64), per)
        return np.asarray(np.maximum.accumulate(total), dtype=np.float64)

    def need(self, load: FloatArray) -> tuple[IntArray, int]:
        """Fewest pods covering each load (0 for none), and how many loads exceed the largest size."""
        caps = self.capacities()
        k = np.searchsorted(caps, load, side="left").astype(np.int64) + 1
        over = k > len(caps)
        k = np.minimum(k, len(caps))
        k[load <= 0] = 0
        return k, int(np.count_nonzero(over & (load > 0)))

    def attainment(self, k: int, load: float) -> float | None:
        """An upper estimate of k pods' SLO attainment at ``load``: the lowest measured attainment at a
        load at or below it (attainment falls with load); 1 below every probe; None for an unmeasured k."""
        if k <= 0:
            return 0.0
        if k not in self.measured:
            return None
        cap = self.measured[k]
        # Above capacity, a measured k + 1 bounds the loads worth probing; without it (the largest
        # size) the bisection's own probes just above capacity give a looser, still upper, estimate.
        over = cap.load < load and k + 1 in self.measured
        points = sorted(cap.probes + (_overload(self.scenario, k, self.slo_target) if over else ()))
        best = 1.0
        for x, att in points:
            if x > load:
                break
            best = min(best, att)
        return best


# -- the future load ----------------------------------------------------------------------------------
def _window_load(
    scenario: Scenario, workload: Workload, starts: FloatArray, lengths: FloatArray
) -> tuple[FloatArray, str]:
    """Load per window in the capacity's unit, and a phrase saying what it is (step 2)."""
    cfg = scenario.workload
    duration = scenario.duration_s
    if isinstance(cfg, ClosedLoopWorkload):
        assert workload.closed_loop is not None
        users = _mean_users(workload.closed_loop.schedule, starts, starts + lengths)
        return users, "the time-weighted mean number of users in each"
    if isinstance(cfg, (PoissonWorkload, GammaWorkload)):
        offsets = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES
        points = starts[:, None] + offsets[None, :] * lengths[:, None]
        rates = np.array([workload.expected_rate_rps(float(t)) for t in points.ravel()])
        return rates.reshape(points.shape).mean(axis=1), "the workload's own rate (its intensity) over each"
    assert isinstance(cfg, (MmppWorkload, TraceWorkload)) and workload.open_loop is not None
    arrivals = workload.open_loop.arrivals(0.0, duration)
    centre = starts + lengths / 2.0
    lo = np.clip(centre - REALISED_SPAN_S / 2.0, 0.0, duration)
    hi = np.clip(centre + REALISED_SPAN_S / 2.0, 0.0, duration)
    counts = np.searchsorted(arrivals, hi, side="left") - np.searchsorted(arrivals, lo, side="left")
    rate = counts / np.maximum(hi - lo, 1e-9)
    return rate, f"this seed's realised arrivals over the {REALISED_SPAN_S:g} s around each"


def _mean_users(schedule: UserSchedule, t0: FloatArray, t1: FloatArray) -> FloatArray:
    """Time-weighted mean users over [t0, t1) of a step schedule, from its running user-seconds."""
    times = schedule.times_s.astype(np.float64)
    counts = schedule.counts.astype(np.float64)
    cum = np.concatenate(([0.0], np.cumsum(counts[:-1] * np.diff(times))))

    def user_seconds(t: FloatArray) -> FloatArray:
        i = np.maximum(np.searchsorted(times, t, side="right") - 1, 0)
        return np.asarray(cum[i] + counts[i] * (t - times[i]), dtype=np.float64)

    return (user_seconds(t1) - user_seconds(t0)) / np.maximum(t1 - t0, 1e-9)


# -- schedule -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Budget:
    """How the oracle spent the run's miss budget (requests)."""

    allowed: float
    """Misses the target allows: (1 − target) × requests."""
    spent: float
    """Estimated misses of the final schedule."""
    dropped_pod_s: float
    """Pod-seconds taken out of the per-window schedule."""


def _spend_budget(
    table: _CapacityTable, replicas: IntArray, load: FloatArray, requests: FloatArray, lengths: FloatArray
) -> tuple[IntArray, _Budget]:
    """Drop pods at the edges of their runs, cheapest estimated misses per pod-second first, while the
    estimated attainment over the run stays at the target (module docstring, step 3).

    Only run edges save anything: a pod dropped from one 10-s window inside a run would be kept idle
    through the gap (it is shorter than a cold start). Time 0 is no edge either: pods Ready then are
    free, and starting one at 10 s costs as much as holding it from 0. Example
    (cpu-preprocess, ramp 60 → 240 requests/s): at 66 requests/s one pod meets the SLO for ~98 % of
    requests and two for 100 %; dropping the second pod from that 10-s window costs ~13 misses for
    10 pod-seconds, far cheaper than any window at 150 requests/s, where one pod answers almost nobody.
    """
    k = replicas.copy()
    n = len(k)
    total = float(requests.sum())
    cache: dict[tuple[int, int], float] = {}

    def att(w: int, pods: int) -> float | None:
        key = (w, pods)
        if key not in cache:
            value = table.attainment(pods, float(load[w]))
            cache[key] = math.nan if value is None else value
        value = cache[key]
        return None if math.isnan(value) else value

    met = 0.0
    for w in range(n):
        if k[w] > 0:
            # A size between measured ones (above 8 pods) carries its window by construction: count 1.
            value = att(w, int(k[w]))
            met += (1.0 if value is None else value) * float(requests[w])
    allowed = (1.0 - table.slo_target) * total
    budget = met - table.slo_target * total
    heap: list[tuple[float, int, int]] = []

    def push(w: int) -> None:
        pods = int(k[w])
        if pods <= 1:
            return  # an outage is not running hot: the last pod of a loaded window stays
        left = int(k[w - 1]) if w > 0 else pods  # t = 0 is no edge (see above)
        right = int(k[w + 1]) if w + 1 < n else -1
        if left >= pods and right >= pods:
            return  # inside its run
        now, fewer = att(w, pods), att(w, pods - 1)
        if now is None or fewer is None or fewer < OVERLOAD_FLOOR:
            return  # hot, not collapsed: a collapsed queue's backlog would spill into later windows
        cost = max(0.0, now - fewer) * float(requests[w])
        heapq.heappush(heap, (cost / float(lengths[w]), w, pods))

    for w in range(n):
        push(w)
    dropped = 0.0
    while heap:
        rate, w, pods = heapq.heappop(heap)
        if int(k[w]) != pods:
            continue
        cost = rate * float(lengths[w])
        if cost > budget:
            continue
        budget -= cost
        k[w] = pods - 1
        dropped += float(lengths[w])
        for v in (w - 1, w, w + 1):
            if 0 <= v < n:
                push(v)
    return k, _Budget(allowed, allowed - budget, dropped)


# -- charge -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Charge:
    pod_seconds: float
    gpu_seconds: float
    cost_usd: float
    cold_starts: int
    start_pod_seconds: float


def _charge(
    replicas: IntArray, starts: FloatArray, lengths: FloatArray, cold_s: float, slots: list[_Slot]
) -> _Charge:
    """Pod-seconds, GPU-seconds and dollars of a schedule, pod by pod (the j-th pod is held where
    replicas ≥ j, in the j-th slot: its GPUs or its share of one, at its pool's price).

    A pod needed again after a gap pays min(gap, cold start): kept idle through a 5-s dip, restarted
    after a 5-minute one (11 s of starting instead of 300 s idle). One needed first at t pays
    min(t, cold start): it could not have started before 0, where a policy's accounting begins too.
    """
    pod_s = gpu_s = cost = start_s = 0.0
    cold_starts = 0
    ends = starts + lengths
    for j in range(1, int(replicas.max(initial=0)) + 1):
        on = np.concatenate(([0], (replicas >= j).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(on))
        run_start, run_end = starts[edges[0::2]], ends[edges[1::2] - 1]
        gaps = run_start[1:] - run_end[:-1]
        starting = min(float(run_start[0]), cold_s) + float(np.minimum(gaps, cold_s).sum())
        cold_starts += int(run_start[0] > 0) + int(np.count_nonzero(gaps > cold_s))
        seconds = float((run_end - run_start).sum()) + starting
        slot = slots[j - 1]
        pod_s += seconds
        gpu_s += seconds * slot.gpus
        start_s += starting
        cost += seconds * slot.gpus / 3600.0 * slot.usd_per_gpu_hour
    return _Charge(pod_s, gpu_s, cost, cold_starts, start_s)


# -- the oracle ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OracleResult:
    """A clairvoyant lower bound on GPU-hours for one scenario and seed (the method above)."""

    scenario: str
    seed: int
    capacity_rps_per_replica: float
    gpu_hours: float
    cost_usd: float
    times_s: np.ndarray
    replicas: np.ndarray
    method: str
    planner_inputs: dict[str, Any] | None = None
    """The capacity model and timing a ``kind: planner`` config takes for this scenario's service,
    from the same measurement (:func:`gpuscale.experiments.capacity.planner_inputs`)."""
    max_replicas: int | None = None
    """The most pods the scenario's cluster holds at once (its pools at their largest)."""
    covering: np.ndarray | None = None
    """Per window, the fewest pods whose capacity carries its load (capped at the cluster), before the
    miss budget is spent (step 3): the schedule that meets the target in every window. The feasible
    reference (:mod:`gpuscale.experiments.references`) follows it; None in results stored before it."""
    over_windows: int = 0
    """Windows whose load exceeds what the cluster's largest fleet carries within the SLO: there the
    bound holds every pod and still misses (:func:`gpuscale.experiments.references.feasibility`)."""


def compute_oracle(
    scenario: Scenario,
    seed: int,
    *,
    slo_target: float = 0.99,
    base_dir: Path | None = None,
    source: str = "scenario",
) -> OracleResult:
    """The clairvoyant lower bound on GPU-hours for ``scenario`` under the load of ``seed``.

    ``times_s`` are the window starts and ``replicas`` the Ready pods the oracle holds in each window;
    ``method`` explains the figures in a few sentences. Deterministic for a scenario and seed.
    """
    from gpuscale.experiments.capacity import planner_inputs  # capacity builds on this module

    scenario = with_token_mix(scenario, base_dir, source)
    duration = scenario.duration_s
    workload = build_workload(
        scenario.workload, seed=seed, duration_s=duration, source=source, base_dir=base_dir
    )
    starts = np.arange(0.0, duration, WINDOW_S, dtype=np.float64)
    lengths = np.minimum(starts + WINDOW_S, duration) - starts
    load, load_phrase = _window_load(scenario, workload, starts, lengths)

    slots = _slots(scenario)
    k_max = len(slots)
    table = _CapacityTable(scenario, slo_target, max(k_max, 1))
    one = table.measure(1)
    table.cover(float(load.max(initial=0.0)))
    per_window, over = table.need(load)
    if k_max == 0:
        per_window[:] = 0
    rate_per_load = one.rps / one.load if one.load > 0 else 0.0
    requests = load * lengths * (rate_per_load if isinstance(scenario.workload, ClosedLoopWorkload) else 1.0)
    replicas, budget = _spend_budget(table, per_window, load, requests, lengths)

    cold_s = min_cold_start_s(scenario.startup)
    charge = _charge(replicas, starts, lengths, cold_s, slots)
    gpu_hours = charge.gpu_seconds / 3600.0

    peak = int(replicas.max(initial=0))
    per_replica_load, per_replica_rps = table.per_replica_at(max(peak, 1))
    method = _explain(
        scenario,
        seed=seed,
        slo_target=slo_target,
        load_phrase=load_phrase,
        table=table,
        peak=peak,
        per_replica=(per_replica_load, per_replica_rps),
        mean_replicas=float((replicas * lengths).sum() / duration),
        cold_s=cold_s,
        budget=budget,
        charge=charge,
        gpu_hours=gpu_hours,
        over=over,
        k_max=k_max,
        prices=sorted({slot.usd_per_gpu_hour for slot in slots}),
    )
    return OracleResult(
        scenario=scenario.name,
        seed=seed,
        capacity_rps_per_replica=per_replica_rps,
        gpu_hours=gpu_hours,
        cost_usd=charge.cost_usd,
        times_s=starts,
        replicas=replicas,
        method=method,
        planner_inputs=planner_inputs(scenario, ((k, c.rps) for k, c in table.measured.items()), slo_target),
        max_replicas=k_max,
        covering=per_window,
        over_windows=over,
    )


def _explain(
    scenario: Scenario,
    *,
    seed: int,
    slo_target: float,
    load_phrase: str,
    table: _CapacityTable,
    peak: int,
    per_replica: tuple[float, float],
    mean_replicas: float,
    cold_s: float,
    budget: _Budget,
    charge: _Charge,
    gpu_hours: float,
    over: int,
    k_max: int,
    prices: list[float],
) -> str:
    """The method in a few sentences, with this scenario's numbers."""
    slo = f"{slo_target:.0%} of requests within {scenario.slo.latency_ms:,g} ms"
    one = table.measured[1]
    per_load, per_rps = per_replica
    workload = scenario.workload
    if isinstance(workload, ClosedLoopWorkload):
        lo, hi = workload.think_time_s
        capacity = f"one pod serves {one.load:.0f} users thinking {lo:g}-{hi:g} s ({one.rps:,.1f} requests/s)"
        if peak > 1:
            capacity += f"; {peak} pods serve {per_load:.1f} users ({per_rps:,.1f} requests/s) each"
    else:
        capacity = f"one pod carries {one.rps:,.1f} requests/s"
        if peak > 1:
            capacity += f"; {peak} pods carry {per_rps:,.1f} requests/s each"
    sizes = ", ".join(str(k) for k in sorted(table.measured))
    if budget.spent > budget.allowed:
        spend = (
            f"no pod can be spared: even that schedule misses an estimated {budget.spent:,.0f} requests, "
            f"more than the {budget.allowed:,.0f} the target allows"
        )
    elif budget.dropped_pod_s == 0:
        spend = (
            "no pod at the edge of a run can be spared without taking its window below "
            f"{OVERLOAD_FLOOR:.0%} attainment or leaving it without pods"
        )
    else:
        spend = (
            f"pods come off the edges of their runs while the estimated attainment over the run stays at "
            f"{slo_target:.0%} ({budget.dropped_pod_s / 3600.0:.3f} pod-hours for {budget.spent:,.0f} of "
            f"the {budget.allowed:,.0f} misses allowed)"
        )
    nodes = scenario.cluster.node_autoscaler.kind != "none"
    if len(prices) == 1:
        price = f" at ${prices[0]:g} per GPU-hour"
        price += ", the node price per GPU (clouds bill nodes here)" if nodes else ""
    else:
        price = " (pools filled first-fit"
        price += ", each at its node price per GPU: clouds bill nodes here)" if nodes else ")"
    text = (
        f"Clairvoyant lower bound for {scenario.name}, seed {seed}. Capacity at the SLO ({slo}), measured "
        f"with the simulator on always-Ready fleets of {sizes} pods under constant load (runs of "
        f"{MEASURE_REQUESTS:,} requests, {MEASURE_MIN_S / 60:g} min to {MEASURE_MAX_S / 3600:g} h; "
        f"bisection to 1 %): {capacity}. The load is {load_phrase} {WINDOW_S:g}-s window. Each window gets "
        f"the fewest pods that carry it; then {spend}. Result: peak {peak} pods, mean {mean_replicas:.2f}. "
        f"Every added pod starts {cold_s:g} s before it is needed (the fastest cold start, node caches "
        f"warm) and is charged while starting ({charge.cold_starts} starts, "
        f"{charge.start_pod_seconds / 3600.0:.3f} pod-hours); a pod idle for less than that is kept, "
        f"others are freed at once. GPU-hours {gpu_hours:.3f}, ${charge.cost_usd:.2f}{price}."
        f"{_allocation_text(scenario)}"
    )
    if over:
        text += (
            f" In {over} windows the load exceeds what the cluster's {k_max} pods carry within the SLO; "
            "the oracle holds all of them there."
        )
    return text
