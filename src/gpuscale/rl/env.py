"""A Gymnasium environment over gpuscale's simulator: one step is one control tick of a scenario.

============  =====================================================================================
space         what it is
============  =====================================================================================
observation   ``Box(0, clip, (frame_size x stack,))``: the declared signals of the snapshot the
              policy saw at the tick, each over its scale, then the spec, Ready and starting +
              pending pods over the replica scale; the last ``stack`` frames
              (:func:`gpuscale.policies.learned.observe`, the very function ``kind: learned`` runs
              live on a Prometheus snapshot)
action        ``Discrete(n)``: a replica change (``delta``, default -2..+2 as KIS-S) or an absolute
              target ``min..max`` (``target``); the shared tail clamps it to the bounds
reward        ``cost-slo`` (default) or ``kis-s`` (:class:`RewardSpec`)
episode       a scenario x seed drawn from the training suite, control taken at a random tick
              within ``start_offset_max_s`` (before it the deployment holds); ends with the scenario
============  =====================================================================================

Each step the agent's action is the decision of the tick whose snapshot it saw: the simulator is
paused between the snapshot and the decision (:meth:`~gpuscale.sim.engine.Simulation.observe_next_tick`),
so training sees exactly what ``gpuscale run`` would have decided on, with no tick of lag.

**The default reward.** Per tick, in units of the full fleet's cost for one tick ``C``
(``max_replicas x GPUs per pod x $/GPU-hour x tick``)::

    reward = -(cost of the tick / C + min(excess / allowance, penalty_cap))
    allowance = (1 - slo_target) x requests that ended in the tick     (at least 1)
    excess    = max(0, requests that missed the SLO - allowance)

Misses within the SLO's allowance (1 % at a 99 % target) are free; past it, missing another
allowance's worth costs as much as running the whole fleet for the tick (up to ``penalty_cap``
fleets), so adding capacity that meets the target always pays, and once the target is met only cost
is left to save. Example: 10 RTX 3080s at $0.30/h and a 30-s tick give C = $0.025; 1,000 requests,
25 missed: allowance 10, excess 15 -> penalty min(1.5, 2) = 1.5; with 4 pods running the tick's cost
is 0.4 C; reward -1.9.

**KIS-S's reward** (``kind: kis-s``): ``0.4 x latency gain + 0.3 x throughput gain + 0.2 x
efficiency + stability``, the gains against per-pattern baselines (the P95 and throughput KIS-S
measured without autoscaling), clipped at 0; efficiency is the GPU share of replicas (1 here: every
pod has a GPU); stability +0.01, or -0.02 after more than 2 scaling actions in the last 5.
KIS-S's -0.5 above 90 % CPU is left out: gpuscale's default signals carry no CPU utilization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from gpuscale.config.scenario import Scenario
from gpuscale.experiments.catalog import resolve_scenario
from gpuscale.policies.base import Aggregation, Decision, Metric, MetricsSnapshot, Reason, SignalSpec
from gpuscale.policies.learned import ActionSpec, Frame, ObservationSpec, observe
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    TailedPolicy,
    direction_reason,
)
from gpuscale.sim import kernel as K
from gpuscale.sim.engine import Simulation
from gpuscale.sim.telemetry import hist_quantile

KIS_S_P95_MS = {"kis-s-random": 2600.0, "kis-s-spike": 370.0, "kis-s-ramp": 5800.0, "kis-s-periodic": 2300.0}
"""KIS-S's hard-coded GPU P95 baselines per traffic pattern (its environment's constants), ms."""
KIS_S_THROUGHPUT_RPS = {"kis-s-random": 13.4, "kis-s-spike": 6.3, "kis-s-ramp": 10.1, "kis-s-periodic": 10.2}
"""KIS-S's measured GPU throughput without autoscaling per pattern, requests/s."""


def default_signals(window_s: float = 30.0) -> tuple[SignalSpec, ...]:
    """GPU util per pod, in-flight and queued requests in total, request rate in total, p95 latency."""
    return (
        SignalSpec(Metric.GPU_UTIL, window_s, Aggregation.POD_MEAN),
        SignalSpec(Metric.CONCURRENCY, window_s, Aggregation.TOTAL),
        SignalSpec(Metric.QUEUE_LENGTH, window_s, Aggregation.TOTAL),
        SignalSpec(Metric.REQUEST_RATE, window_s, Aggregation.TOTAL),
        SignalSpec(Metric.LATENCY_P95_MS, window_s, Aggregation.POD_MEAN),
    )


@dataclass(frozen=True)
class RewardSpec:
    """``cost-slo`` (default; penalty derived from ``slo_target``) or ``kis-s``."""

    kind: Literal["cost-slo", "kis-s"] = "cost-slo"
    slo_target: float = 0.99
    penalty_cap: float = 2.0
    """The most one tick's SLO penalty counts, in full-fleet ticks (``cost-slo``): a tick that fails
    the target costs up to twice the whole fleet, enough that every cure pays, and bounded so that
    one overloaded tick (thousands of misses) does not drown what the agent can learn about cost."""

    def __post_init__(self) -> None:
        if not 0 < self.slo_target < 1:
            raise ValueError("slo_target must be in (0, 1)")


@dataclass(frozen=True)
class EnvConfig:
    """What the environment trains on and how it observes, acts and is rewarded."""

    scenarios: tuple[str, ...] = ("kis-s-spike", "kis-s-ramp", "kis-s-periodic", "kis-s-random")
    seeds: tuple[int, ...] = (1, 2, 3)
    signals: tuple[SignalSpec, ...] = field(default_factory=default_signals)
    stack: int = 2
    actions: ActionSpec = field(default_factory=lambda: ActionSpec("delta"))
    min_replicas: int = 1
    max_replicas: int = 10
    tick_s: float = 30.0
    start_offset_max_s: float = 0.0
    reward: RewardSpec = field(default_factory=RewardSpec)
    scrape_interval_s: float | None = 15.0
    """Overrides the scenarios' scrape interval (None keeps theirs): Prometheus' default 15 s, which
    is also what a live deployment of the trained policy usually scrapes at (and 15x fewer
    simulated scrapes than the scenarios' 1 s)."""
    keep_summary: bool = False
    """Keep the simulation's running totals, so that ``env.sim.result()`` gives the episode's
    summary once it is done (SLO attainment, GPU-hours, ...); training needs none, and leaving them
    out makes a step cheaper without changing it."""

    def __post_init__(self) -> None:
        if not self.scenarios or not self.seeds:
            raise ValueError("a training suite needs at least one scenario and one seed")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")

    @property
    def observation(self) -> ObservationSpec:
        return ObservationSpec.default(self.signals, float(self.max_replicas), self.stack)


class _Box:
    """The action the agent set for the tick being decided (None: the deployment holds)."""

    index: int | None = None


@dataclass(frozen=True)
class _ControlledState:
    tail: PipelineState


@dataclass(frozen=True, eq=False)
class ControlledPolicy(TailedPolicy[_ControlledState]):
    """The agent's action as a policy: what ``kind: learned`` does with its network's choice."""

    signals: tuple[SignalSpec, ...]
    actions: ActionSpec
    min_replicas: int
    max_replicas: int
    tick_s: float
    box: _Box
    name: str = "rl-agent"

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {}

    @property
    def sync_period_s(self) -> float:
        return self.tick_s

    @property
    def max_signal_age_s(self) -> float:
        return 3.0 * self.tick_s

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.min_replicas, self.max_replicas)

    @property
    def initial_replicas(self) -> int | None:
        return None

    @cached_property
    def tail(self) -> Pipeline:
        return Pipeline((Bounds(self.min_replicas, self.max_replicas),))

    def initial_state(self) -> _ControlledState:
        return _ControlledState(self.tail.initial_state())

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: _ControlledState
    ) -> tuple[Recommendation | Decision, _ControlledState]:
        index = self.box.index
        if index is None:
            return Decision.hold(Reason.DESIRED_WITHIN_RANGE, "before the agent takes control"), state
        current = snapshot.current_replicas
        wanted = self.actions.replicas(index, current)
        return Recommendation(
            wanted, direction_reason(wanted, current), f"agent chose {self.actions.describe(index)}"
        ), state


class ScalingEnv(gym.Env[np.ndarray, int]):
    """See the module docstring. ``reset(seed=...)`` makes the episode sequence reproducible."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, config: EnvConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or EnvConfig()
        self.spec_obs = cfg.observation
        self._scenarios: list[Scenario] = [self._prepare(resolve_scenario(s).scenario) for s in cfg.scenarios]
        self.observation_space = gym.spaces.Box(
            0.0, self.spec_obs.clip, shape=(self.spec_obs.size,), dtype=np.float32
        )
        self.action_space: gym.spaces.Discrete = gym.spaces.Discrete(cfg.actions.n)  # type: ignore[assignment]
        self._box = _Box()
        self.policy = ControlledPolicy(
            cfg.signals, cfg.actions, cfg.min_replicas, cfg.max_replicas, cfg.tick_s, self._box
        )
        self.sim: Simulation | None = None
        self._checked: set[tuple[int, int]] = set()
        """The (scenario index, seed) pairs whose runs passed the simulator's checks."""
        self._frames: tuple[Frame, ...] = ()
        self._obs = np.zeros(self.spec_obs.size, dtype=np.float32)

    # -- episode -----------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """A new episode: ``options`` may name ``scenario`` (an index or name of the suite's) and
        ``seed`` (the simulation's) instead of drawing them."""
        super().reset(seed=seed)
        cfg, rng = self.config, self.np_random
        options = options or {}
        which = options.get("scenario")
        if which is None:
            index = int(rng.integers(len(self._scenarios)))
        elif isinstance(which, str):
            index = list(cfg.scenarios).index(which)
        else:
            index = int(which)
        sim_seed = options.get("seed")
        if sim_seed is None:
            sim_seed = cfg.seeds[int(rng.integers(len(cfg.seeds)))]
        scenario = self._scenarios[index]
        offset_ticks = int(rng.integers(int(cfg.start_offset_max_s // cfg.tick_s) + 1))
        self.scenario_name = cfg.scenarios[index]
        # What only reports read is left out (the agent reads no per-pod samples): every step is the same.
        # The limits of a run are checked once per scenario and seed: every episode of the pair is
        # the same run up to the agent's actions.
        self.sim = Simulation(
            scenario,
            self.policy,
            seed=int(sim_seed),
            timeline=False,
            summary=cfg.keep_summary,
            pod_samples=False,
            checked=(index, int(sim_seed)) in self._checked,
        )
        self._checked.add((index, int(sim_seed)))
        self._box.index = None
        self._frames = ()
        self._recent: tuple[bool, ...] = ()
        self._gpu_price_s = scenario.cluster.pools[0].price / 3600.0 * scenario.model.gpus_per_pod
        self._last_cost = 0.0
        self._last = self._counters()
        snapshot = self._observe()
        for _ in range(offset_ticks):
            if snapshot is None or self.sim.done:
                break
            self.sim.decide_observed()
            snapshot = self._observe()
            self._last_cost = self.sim.target.gpu_seconds(self.sim.now)[1]
            self._last = self._counters()
        if snapshot is None:
            raise RuntimeError(f"scenario {self.scenario_name} ended before its start offset")
        return self._obs.copy(), self._info(snapshot)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        sim = self.sim
        if sim is None:
            raise RuntimeError("call reset() first")
        self._box.index = int(action)
        t0, before = sim.now, self._snapshot.current_replicas
        decision = sim.decide_observed()
        changed = decision.desired_replicas is not None and decision.desired_replicas != before
        self._recent = (*self._recent, changed)[-5:]
        snapshot = self._observe()
        t1 = sim.now if snapshot is not None else sim.duration_s
        cost = sim.target.gpu_seconds(t1)[1]
        counters = self._counters()
        tick_cost, self._last_cost = cost - self._last_cost, cost
        delta = {k: counters[k] - self._last[k] for k in ("ended", "met", "completed")}
        hist = counters["hist"] - self._last["hist"] if counters["hist"] is not None else None
        self._last = counters
        reward = self._reward(tick_cost, delta, hist, max(t1 - t0, 1e-9))
        info: dict[str, Any] = self._info(snapshot) if snapshot is not None else {"time_s": sim.duration_s}
        info.update(
            cost_usd=tick_cost,
            ended=delta["ended"],
            missed=delta["ended"] - delta["met"],
            decision=decision.desired_replicas,
            reason=decision.reason.value,
            changed=changed,
        )
        return self._obs.copy(), reward, snapshot is None, False, info

    # -- internals ---------------------------------------------------------------------------------
    def _prepare(self, scenario: Scenario) -> Scenario:
        scrape = self.config.scrape_interval_s
        if scrape is None:
            return scenario
        telemetry = scenario.telemetry.model_copy(update={"scrape_interval_s": scrape})
        return scenario.model_copy(update={"telemetry": telemetry})

    def _observe(self) -> MetricsSnapshot | None:
        assert self.sim is not None
        snapshot = self.sim.observe_next_tick()
        if snapshot is not None:
            self._obs, self._frames = observe(
                self.spec_obs, snapshot, self.policy.max_signal_age_s, self._frames
            )
            self._snapshot = snapshot
        return snapshot

    def _counters(self) -> dict[str, Any]:
        assert self.sim is not None
        dp = self.sim.dp
        return {
            "ended": int(dp.gi[K.G_ARRIVED]) - dp.in_flight,
            "met": int(dp.gi[K.G_SLO_MET]),
            "completed": int(dp.gi[K.G_COMPLETED]),
            # only KIS-S's reward reads the latency histogram (a copy of 2,688 counters a step)
            "hist": dp.hist.copy() if self.config.reward.kind == "kis-s" else None,
        }

    def _reward(self, tick_cost: float, delta: dict[str, int], hist: np.ndarray | None, dt: float) -> float:
        cfg = self.config
        if cfg.reward.kind == "kis-s":
            assert hist is not None
            base_p95 = KIS_S_P95_MS.get(self.scenario_name, self._slo_ms())
            base_rps = KIS_S_THROUGHPUT_RPS.get(self.scenario_name, 10.0)
            p95 = hist_quantile(hist, 0.95)
            p95_ms = p95 * 1000.0 if p95 is not None else base_p95
            latency_gain = max(0.0, (base_p95 - p95_ms) / base_p95)
            throughput_gain = max(0.0, (delta["completed"] / dt - base_rps) / base_rps)
            stability = -0.02 if sum(self._recent) > 2 else 0.01
            return 0.4 * latency_gain + 0.3 * throughput_gain + 0.2 * 1.0 + stability
        full = cfg.max_replicas * self._gpu_price_s * dt
        allowance = max(1.0, (1.0 - cfg.reward.slo_target) * delta["ended"])
        excess = max(0.0, (delta["ended"] - delta["met"]) - allowance)
        return -(tick_cost / full + min(excess / allowance, cfg.reward.penalty_cap))

    def _slo_ms(self) -> float:
        assert self.sim is not None
        return self.sim.scenario.slo.latency_ms

    def _info(self, snapshot: MetricsSnapshot) -> dict[str, Any]:
        return {
            "time_s": snapshot.time_s,
            "scenario": self.scenario_name,
            "replicas": snapshot.current_replicas,
            "ready": snapshot.ready,
        }


def make_env(config: EnvConfig | None = None) -> ScalingEnv:
    return ScalingEnv(config)


def rollout(
    env: ScalingEnv, choose: Any, *, scenario: str | int, seed: int, reset_seed: int = 0
) -> tuple[float, Sequence[dict[str, Any]]]:
    """One episode with ``choose(obs) -> action``; its return and the per-step infos."""
    obs, _ = env.reset(seed=reset_seed, options={"scenario": scenario, "seed": seed})
    total, infos, done = 0.0, [], False
    while not done:
        obs, r, done, _, info = env.step(int(choose(obs)))
        total += r
        infos.append(info)
    return total, infos
