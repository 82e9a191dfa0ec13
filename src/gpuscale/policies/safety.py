"""The safety tail: the ``safety:`` block's stages, as one wrapper around any policy.

``gpuscale run`` and the simulator wrap the policy in the same :class:`SafePolicy`, so a scenario
with the controller's ``safety:`` block shows in ``compare`` exactly what ``run`` would write. The
stages run on the policy's decision, in this order (each that changes the count adds its reason to
``Decision.limits``; the last one that did becomes the decision's reason):

1. **fail-static**: a scale-down while any signal the policy reads is missing becomes a hold -- no
   data must never look like no load (``NoData``);
2. **bounds**: ``min_replicas`` / ``max_replicas``, each raised or lowered by the schedule windows
   open now (``TooFewReplicas`` / ``TooManyReplicas``, or ``Scheduled`` when a window's bound is
   the one that applied); a window's maximum wins over any minimum;
3. **max step** per tick: 2 -> 10 with ``max_step`` 3 writes 5 (``ScaleUpLimit`` /
   ``ScaleDownLimit``);
4. **GPU budget**, last, so no step ever asks for more GPUs than the budget: the active count first
   (budget 10 at 4 GPUs per pod caps it at 2 replicas, ``GpuBudget``), then the warm pool and the
   placeholder pods share what is left (budget 12 at 1 GPU per pod with 10 active: a pool of 3 is
   cut to 2 and the placeholders to 0).

A hold stays a hold unless a stage moves the count away from the current one (a count above a new
maximum comes down even on a hold). The wrapper keeps the policy's state as it is: the tail has no
memory of its own, so ``SafePolicy(p).decide`` is ``p.decide`` followed by :func:`guard`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gpuscale.config.safety import SafetyConfig
from gpuscale.policies.base import Decision, Delegating, MetricsSnapshot, Policy, Reason, SignalSpec
from gpuscale.policies.schedule import scheduled_bounds

S = TypeVar("S")


def guard(
    decision: Decision,
    snapshot: MetricsSnapshot,
    safety: SafetyConfig,
    signals: tuple[SignalSpec, ...],
    *,
    epoch_offset_s: float = 0.0,
) -> Decision:
    """``decision`` after the safety stages (see the module doc); unchanged when none applies."""
    current = snapshot.current_replicas
    n = current if decision.desired_replicas is None else decision.desired_replicas
    limits: list[str] = []
    notes: list[str] = []
    reason: Reason | None = None

    def limit(value: int, why: Reason, note: str) -> None:
        nonlocal n, reason
        n = value
        reason = why
        limits.append(why.value)
        notes.append(note)

    # 1. fail-static
    missing = [spec.key for spec in signals if snapshot.get(spec).value is None]
    if n < current and missing:
        limit(current, Reason.NO_DATA, f"no scale-down while {', '.join(missing)} missing -> keep {current}")
    # 2. bounds, with the schedule's
    lo, hi = safety.min_replicas, safety.max_replicas
    lo_why, hi_why = Reason.TOO_FEW_REPLICAS, Reason.TOO_MANY_REPLICAS
    if safety.schedules:
        sched = scheduled_bounds(safety.schedules, snapshot.time_s + epoch_offset_s)
        if sched.min_replicas is not None and sched.min_replicas > lo:
            lo, lo_why = sched.min_replicas, Reason.SCHEDULED
        if sched.max_replicas is not None and sched.max_replicas < hi:
            hi, hi_why = sched.max_replicas, Reason.SCHEDULED
        lo = min(lo, hi)
        window = f" ({sched.note} open)" if sched.note else ""
    else:
        window = ""
    if n < lo:
        limit(lo, lo_why, f"below the minimum {lo}{window if lo_why is Reason.SCHEDULED else ''} -> {lo}")
    if n > hi:
        limit(hi, hi_why, f"above the maximum {hi}{window if hi_why is Reason.SCHEDULED else ''} -> {hi}")
    # 3. max step
    if safety.max_step is not None and abs(n - current) > safety.max_step:
        up = n > current
        stepped = current + safety.max_step if up else current - safety.max_step
        why = Reason.SCALE_UP_LIMIT if up else Reason.SCALE_DOWN_LIMIT
        limit(stepped, why, f"at most {safety.max_step} per tick from {current} -> {stepped}")
    # 4. GPU budget: active first, then the pool, then the placeholders
    standby, placeholders = decision.standby_replicas, decision.placeholder_pods
    pods = safety.budget_pods
    if pods is not None:
        if n > safety.ceiling:
            limit(safety.ceiling, Reason.GPU_BUDGET, f"GPU budget {safety.gpu_budget} -> {safety.ceiling}")
        left = max(pods - n, 0)
        pool = snapshot.standby_target if standby is None else standby
        if pool > left:
            standby = left
            limits.append(Reason.GPU_BUDGET.value)
            notes.append(f"GPU budget {safety.gpu_budget}: standby pool {pool} -> {left}")
        left -= min(pool, left)
        if placeholders is not None and placeholders > left:
            limits.append(Reason.GPU_BUDGET.value)
            notes.append(f"GPU budget {safety.gpu_budget}: placeholder pods {placeholders} -> {left}")
            placeholders = left
    if not limits:
        return decision
    desired = decision.desired_replicas
    if reason is not None and not (desired is None and n == current):
        desired = n
    message = (
        f"{decision.message}; safety: {'; '.join(notes)}"
        if decision.message
        else f"safety: {'; '.join(notes)}"
    )
    return Decision(
        desired,
        decision.reason if reason is None or desired is None else reason,
        message,
        standby_replicas=standby,
        placeholder_pods=placeholders,
        limits=tuple(limits),
    )


@dataclass(frozen=True)
class SafePolicy(Delegating, Generic[S]):
    """``inner`` with the safety tail after it; state, signals and timing are the inner policy's.

    ``epoch_offset_s`` is the epoch of ``snapshot.time_s == 0`` (schedules need calendar time): 0
    live, where snapshot times are epoch seconds; the scenario's start in the simulator.
    """

    inner: Policy[S]
    safety: SafetyConfig
    epoch_offset_s: float = 0.0

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        """The inner bounds within the block's, widened by what the schedule windows may set: a
        window's maximum can go below the minimum, a window's minimum above the inner maximum."""
        lo, hi = self.inner.replica_bounds
        ceiling = self.safety.ceiling
        low = max(lo, self.safety.min_replicas)
        high = ceiling if hi is None else min(hi, ceiling)
        for window in self.safety.schedules:
            if window.max_replicas is not None:
                low = min(low, window.max_replicas)
            if window.min_replicas is not None:
                high = max(high, min(window.min_replicas, ceiling))
        return (min(low, high), high)

    @property
    def initial_replicas(self) -> int | None:
        n = self.inner.initial_replicas
        return None if n is None else max(self.safety.min_replicas, min(n, self.safety.ceiling))

    def initial_state(self) -> S:
        return self.inner.initial_state()

    def decide(self, snapshot: MetricsSnapshot, state: S) -> tuple[Decision, S]:
        decision, state = self.inner.decide(snapshot, state)
        return guard(decision, snapshot, self.safety, self.signals, epoch_offset_s=self.epoch_offset_s), state


def anchored(policy: Policy[Any], epoch_offset_s: float) -> Policy[Any]:
    """``policy`` with every safety wrapper around it (a policy file's own block) reading the calendar
    from ``epoch_offset_s``: in the simulator, snapshot times count from the scenario's start."""
    if isinstance(policy, SafePolicy):
        return SafePolicy(anchored(policy.inner, epoch_offset_s), policy.safety, epoch_offset_s)
    return policy


def schedules_of(policy: Policy[Any]) -> bool:
    """Whether any safety wrapper around ``policy`` has schedule windows (they need a calendar)."""
    return isinstance(policy, SafePolicy) and (bool(policy.safety.schedules) or schedules_of(policy.inner))


def with_safety(policy: Policy[Any], safety: SafetyConfig | None, epoch_offset_s: float = 0.0) -> Policy[Any]:
    """``policy`` wrapped in the safety tail, or as it is when there is no ``safety:`` block."""
    if safety is None:
        return policy
    return SafePolicy(policy, safety, epoch_offset_s)


__all__ = ["SafePolicy", "anchored", "guard", "schedules_of", "with_safety"]
