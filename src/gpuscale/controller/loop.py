"""The live control loop: snapshot -> policy -> safety -> write -> one JSON-lines record per tick.

Deciding is apart from acting: the policy -- wrapped in the safety tail of
:mod:`gpuscale.policies.safety`, exactly as the simulator wraps it -- is pure, and only
:meth:`Controller.tick` touches the target, through the two ports of :mod:`gpuscale.policies.ports`. Every failure becomes a :class:`TickOutcome` (kopf's
"outcome, not exception"): a temporary error holds and is retried next tick, a permanent one (403, the
target deleted) is reported every tick until someone fixes it; nothing escapes :meth:`Controller.run`.

Safety: the config's ``safety:`` block is a stage of the policy's own tail
(:class:`~gpuscale.policies.safety.SafePolicy`: fail-static, bounds and schedules, max step, the GPU
budget); the decision it returns is what is written, and ``Decision.limits`` says which stages
changed it. The target applies the whole decision: the active count, the warm pool's standby pods,
the warm-node placeholder pods.

**Backoff.** A tick fails when the API server errs, or when Prometheus itself does not answer (then
the policy still runs on the missing signals and holds -- fail-static -- and the tick records
``metrics_unavailable``; an answer with no series, as for a workload at zero, is not a failure).
After a failed tick the next one comes after the normal interval (one failure may be a
blip); each further failure in a row doubles the wait, up to ``backoff_max_s`` (default 10 x the
interval or 5 min, whichever is smaller); the first success returns to the interval. Worked example,
interval 15 s, cap 150 s: failures 1, 2, 3, 4, 5, 6 wait 15, 30, 60, 120, 150, 150 s.

**High availability.** With a :class:`~gpuscale.controller.leader.LeaderElector`, :meth:`Controller.run`
also runs an election round every ``retry_period_s`` (renewals go on during backoff); a tick of a
replica that is not the leader reads and writes nothing and records action ``standby``, and the
leadership is checked again just before a write. A replica that becomes leader ticks at once.
On the way out, ``run`` releases the Lease (client-go's ``ReleaseOnCancel``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuscale._core.clock import Clock
from gpuscale._core.errors import PermanentError, TemporaryError
from gpuscale.config.safety import SafetyConfig
from gpuscale.controller.config import ControllerConfig, keeps_warm_nodes, keeps_warm_pool
from gpuscale.controller.leader import LeaderElector, default_identity
from gpuscale.controller.observe import ControllerMetrics, LoopStatus
from gpuscale.controller.target import KubernetesTarget, api_client
from gpuscale.integrations.prometheus import build_client, source_for
from gpuscale.policies import registry
from gpuscale.policies.base import Decision, MetricsSnapshot, Policy
from gpuscale.policies.ports import MetricsSource, NoSignals, ReplicaCounts, ScaleTarget
from gpuscale.policies.safety import SafePolicy

log = logging.getLogger("gpuscale.controller")


@dataclass(frozen=True)
class TickOutcome:
    """What one tick saw, decided and did. ``action``: scaled, unchanged, dry_run, standby or error.

    ``error_kind`` is also set on a tick that decided while its metrics source was unavailable
    (``metrics_unavailable``): the policy saw missing signals and held (fail-static), and the tick
    counts as failed for the backoff and the error metrics.
    """

    time_s: float
    action: str
    counts: ReplicaCounts | None = None
    snapshot: MetricsSnapshot | None = None
    decision: Decision | None = None
    replicas: int | None = None
    safety: tuple[str, ...] = ()
    error_kind: str | None = None
    error: str | None = None

    def record(self, target: str) -> dict[str, Any]:
        """The JSON-lines decision-log record."""
        out: dict[str, Any] = {"time": self.time_s, "target": target, "action": self.action}
        if self.counts is not None:
            c = self.counts
            out["replicas"] = {
                "current": c.current_replicas,
                "ready": c.ready,
                "starting": c.starting,
                "pending": c.pending,
                "draining": c.draining,
                **(
                    {"standby": c.standby, "standby_target": c.standby_target}
                    if c.standby_target or c.standby
                    else {}
                ),
            }
        if self.snapshot is not None:
            out["signals"] = {
                spec.key: {
                    "value": v.value,
                    "age_s": None if math.isinf(v.age_s) else v.age_s,
                    **({"reason": v.reason} if v.reason else {}),
                }
                for spec, v in self.snapshot.signals.items()
            }
        if self.decision is not None:
            d = self.decision
            out["decision"] = {
                "desired_replicas": d.desired_replicas,
                "reason": d.reason.value,
                "message": d.message,
                **({"standby_replicas": d.standby_replicas} if d.standby_replicas is not None else {}),
                **({"placeholder_pods": d.placeholder_pods} if d.placeholder_pods is not None else {}),
            }
        if self.replicas is not None:
            out["written_replicas" if self.action == "scaled" else "target_replicas"] = self.replicas
        if self.safety:
            out["safety"] = list(self.safety)
        if self.error_kind is not None:
            out["error"] = {"kind": self.error_kind, "message": self.error}
        return out


METRICS_UNAVAILABLE = "metrics_unavailable"
"""The error kind of a tick whose metrics source (Prometheus) did not answer."""


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TemporaryError):
        return "temporary"
    if isinstance(exc, PermanentError):
        return "permanent"
    return "unexpected"


def backoff_wait(interval_s: float, failures: int, max_s: float | None = None) -> float:
    """Seconds to wait after ``failures`` failed ticks in a row (see the module doc).

    ``interval_s * 2**(failures - 1)``, capped at ``max_s`` (default ``min(10 * interval_s, 300)``),
    never below ``interval_s``: 15 s and 3 failures wait 60 s.
    """
    if failures <= 1:
        return interval_s
    cap = max_s if max_s is not None else min(10.0 * interval_s, 300.0)
    grown = interval_s * 2.0 ** min(failures - 1, 62)
    return max(interval_s, min(grown, cap))


@dataclass
class Controller:
    """Runs ``policy`` against one target on ``clock``; ``sink`` receives every decision record.

    ``elector`` (optional) makes the controller act only while it holds the Lease; ``metrics`` and
    ``status`` are what the observability endpoint serves.
    """

    policy: Policy[Any]
    metrics: MetricsSource
    target: ScaleTarget
    safety: SafetyConfig
    clock: Clock
    interval_s: float = 15.0
    dry_run: bool = False
    target_name: str = ""
    sink: Callable[[dict[str, Any]], None] = field(default=lambda record: None)
    errors: Counter[str] = field(default_factory=Counter)
    state: Any = None
    elector: LeaderElector | None = None
    backoff_max_s: float | None = None
    observer: ControllerMetrics | None = None
    status: LoopStatus | None = None

    def __post_init__(self) -> None:
        # The config's safety block wraps whatever the policy is -- a policy file's own block
        # included, as a scenario's block wraps it in the simulator -- once.
        if not (isinstance(self.policy, SafePolicy) and self.policy.safety is self.safety):
            self.policy = SafePolicy(self.policy, self.safety)
        if self.state is None:
            self.state = self.policy.initial_state()
        if self.observer is None:
            self.observer = ControllerMetrics(self.target_name)
        if self.status is None:
            self.status = LoopStatus(self.interval_s, self.clock.monotonic())
        self.observer.is_leader.set(0 if self.elector is not None else 1)

    @property
    def acting(self) -> bool:
        """True when this replica may read and write: no election, or the Lease is ours."""
        return self.elector is None or self.elector.is_leader

    @property
    def failures(self) -> int:
        """Failed ticks in a row."""
        assert self.status is not None
        return self.status.failures

    def next_wait(self) -> float:
        """Seconds until the next tick: the interval, or the backoff after failed ticks."""
        return backoff_wait(self.interval_s, self.failures, self.backoff_max_s)

    def elect(self) -> bool:
        """One election round (no elector: always acting); returns whether this replica acts."""
        assert self.observer is not None and self.status is not None
        if self.elector is None:
            return True
        leading = self.elector.step()
        err = self.elector.last_error
        self.status.election_error = str(err) if err is not None else None
        if err is not None:
            kind = _error_kind(err)
            self.errors[f"election_{kind}"] += 1
            self.observer.election_error(kind)
        self.status.standby = not leading
        self.observer.is_leader.set(1 if leading else 0)
        return leading

    def tick(self) -> TickOutcome:
        """One pass; never raises (an error is an outcome, counted in ``errors`` by kind)."""
        assert self.observer is not None and self.status is not None
        now = self.clock.now()
        started = self.clock.monotonic()
        self.status.last_tick_started = started
        counts: ReplicaCounts | None = None
        outcome: TickOutcome
        try:
            if not self.acting:
                outcome = TickOutcome(now, "standby")
            else:
                counts = self.target.counts(now)
                outcome = self._decide_and_act(now, counts)
        except Exception as exc:  # nothing escapes the loop; the kind says what it was
            kind = _error_kind(exc)
            self.errors[kind] += 1
            if kind == "unexpected":
                log.exception("tick failed unexpectedly")
            outcome = TickOutcome(
                now,
                "error",
                counts=counts,
                error_kind=kind,
                error=str(exc) or exc.__class__.__name__,
            )
        if outcome.error_kind == METRICS_UNAVAILABLE:
            self.errors[METRICS_UNAVAILABLE] += 1
        self._account(outcome, started)
        try:
            self.sink(outcome.record(self.target_name))
        except Exception:  # a full disk must not stop scaling
            log.exception("could not write the decision record")
        return outcome

    def _account(self, outcome: TickOutcome, started: float) -> None:
        assert self.observer is not None and self.status is not None
        st = self.status
        st.standby = outcome.action == "standby"
        if outcome.action == "error" or outcome.error_kind is not None:
            st.failures += 1
            st.last_error = outcome.error
        else:
            st.failures = 0
            st.last_error = None
            if not st.standby:
                st.last_success = self.clock.monotonic()
        st.next_wait_s = self.next_wait()
        obs = self.observer
        obs.observe_tick(outcome, self.clock.monotonic() - started)
        obs.failures.set(st.failures)
        obs.next_wait.set(st.next_wait_s)
        obs.is_leader.set(1 if self.acting else 0)

    def _decide_and_act(self, now: float, counts: ReplicaCounts) -> TickOutcome:
        snapshot = self.metrics.snapshot(now, self.policy.signals, counts)
        decision, self.state = self.policy.decide(snapshot, self.state)
        current = counts.current_replicas
        replicas = current if decision.desired_replicas is None else decision.desired_replicas
        common: dict[str, Any] = {
            "counts": counts,
            "snapshot": snapshot,
            "decision": decision,
            "replicas": replicas,
            "safety": decision.limits,
        }
        outage = self.metrics.unavailable()
        if outage is not None:
            common.update(error_kind=METRICS_UNAVAILABLE, error=outage)
        # A warm pool or a warm-node buffer is kept every tick (new pods join it as they appear);
        # the target writes only what changes.
        upkeep = decision.standby_replicas is not None or decision.placeholder_pods is not None
        if replicas == current and not upkeep:
            return TickOutcome(now, "unchanged", **common)
        if self.dry_run:
            return TickOutcome(now, "dry_run" if replicas != current else "unchanged", **common)
        if not self.acting:  # the renew deadline passed while we read: another replica may act now
            return TickOutcome(now, "standby", **common)
        self.target.apply(decision, now)
        return TickOutcome(now, "scaled" if replicas != current else "unchanged", **common)

    def run(
        self,
        *,
        max_ticks: int | None = None,
        stop: threading.Event | None = None,
        release: bool = True,
    ) -> list[TickOutcome]:
        """Tick every ``interval_s`` (longer under backoff; with an elector, an election round every
        retry period in between) until ``stop`` is set or ``max_ticks`` ran; returns the outcomes only
        when ``max_ticks`` bounds the run (an endless run keeps none). On the way out the Lease is
        released unless ``release`` is false. Nothing raises out of the loop."""
        outcomes: list[TickOutcome] = []
        ticks = 0
        clock, elector = self.clock, self.elector
        next_tick = next_round = clock.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                now = clock.monotonic()
                if elector is not None and now >= next_round:
                    was = self.acting
                    if self.elect() and not was:
                        next_tick = now  # a new leader acts at once
                    next_round = now + elector.retry_period_s
                if now >= next_tick:
                    outcome = self.tick()
                    ticks += 1
                    if max_ticks is not None:
                        outcomes.append(outcome)
                        if ticks >= max_ticks:
                            break
                    next_tick = now + self.next_wait()
                wake = next_tick if elector is None else min(next_tick, next_round)
                wait = wake - clock.monotonic()
                if stop is not None:  # a real run: a signal ends the wait at once (real time)
                    stop.wait(max(0.0, wait))
                else:
                    clock.sleep(wait)
        finally:
            if release and elector is not None:
                elector.release()
                assert self.observer is not None
                self.observer.is_leader.set(0)
        return outcomes


def json_lines_sink(
    write: Callable[[str], Any], flush: Callable[[], Any] | None = None
) -> Callable[[dict[str, Any]], None]:
    """A sink writing one JSON object per line."""

    def sink(record: dict[str, Any]) -> None:
        write(json.dumps(record, sort_keys=True) + "\n")
        if flush is not None:
            flush()

    return sink


def build_policy(spec: str | dict[str, Any], config_path: str | Path) -> Policy[Any]:
    """A preset name, a policy file beside the config, or an inline policy mapping."""
    base = Path(config_path).parent
    return registry.resolve_policy(spec, key="policy", source=str(config_path), base=base).build()


def build_controller(
    config: ControllerConfig,
    config_path: str | Path,
    clock: Clock,
    *,
    dry_run: bool = False,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> Controller:
    """Everything ``gpuscale run`` runs, from its config (files read here, nothing started)."""
    source = str(config_path)
    base = Path(config_path).parent
    policy_config = registry.resolve_policy(config.policy, key="policy", source=source, base=base).config()
    policy = registry.build_policy(policy_config)
    kubeconfig = config.kubeconfig
    if kubeconfig is not None and not kubeconfig.is_absolute():
        kubeconfig = base / kubeconfig
    api = api_client(kubeconfig, source)
    t = config.target
    target = KubernetesTarget(
        api,
        t,
        config.pod_selector,
        timeout_s=config.request_timeout_s,
        warm_pool=config.warm_pool if keeps_warm_pool(policy_config) else None,
        headroom=config.headroom.name_for(t) if keeps_warm_nodes(policy_config) else None,
    )
    metrics: MetricsSource = NoSignals()
    if config.prometheus is not None:
        client = build_client(config.prometheus, config_path, "prometheus")
        metrics, _ = source_for(config.prometheus, client, namespace=t.namespace, name=t.name)
    interval = config.interval_s or policy.sync_period_s or 15.0
    elector: LeaderElector | None = None
    le = config.leader_election
    if le.enabled:
        lease_ns, lease_name = le.lease_for(t)
        elector = LeaderElector(
            api,
            namespace=lease_ns,
            name=lease_name,
            identity=le.identity or default_identity(),
            clock=clock,
            lease_duration_s=le.lease_duration_s,
            renew_deadline_s=le.renew_deadline_s,
            retry_period_s=le.retry_period_s,
            timeout_s=config.request_timeout_s,
        )
    return Controller(
        policy,
        metrics,
        target,
        config.safety,
        clock,
        interval_s=interval,
        dry_run=dry_run,
        target_name=f"{t.namespace}/{t.kind}/{t.name}",
        sink=sink or (lambda record: None),
        elector=elector,
        backoff_max_s=config.backoff_max_s,
    )
