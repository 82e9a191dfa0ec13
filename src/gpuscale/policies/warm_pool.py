"""``kind: warm-pool``: keep N loaded standby pods outside the Service; promote one instead of a cold start.

Seed 001's first cold-start mitigation: a second set of pods has the model loaded and passes its
health checks but is not selected by the Service. When the autoscaler wants another replica, a
standby pod is promoted (relabelled into the Service: no image pull, no model load, ready at once)
and a new standby pod starts loading in the background. The first ``standby_replicas`` scale-up steps
after a quiet spell cost no cold start; standby GPUs are paid for all the time.

The policy wraps another one, which decides the *active* replicas exactly as it would alone:

* ``active:`` any registered policy kind (an HPA on queue depth, Knative, Ray Serve, ...), or
* the shorthand: an HPA ``Pods`` metric on per-pod ``concurrency`` or ``queue_length`` with an
  ``AverageValue`` target of ``target_per_replica`` (``metric``, ``window_s``, ``min_replicas``,
  ``max_replicas``).

Every decision carries ``standby_replicas`` (the pool size), so the target keeps the pool filled.
A scale-up while standby pods exist is reported as ``WarmPoolPromote``: the target promotes
``min(standby, increase)`` pods at once and starts the rest (and the refills) cold. The wrapped
policy's reason and message stay in the message.

``headroom_replicas`` adds a warm-*node* buffer on top (``Decision.placeholder_pods``): placeholder
pods hold spare GPUs, so the pods of a scale-up (and the pool's refills) find a GPU at once instead
of waiting minutes for a new node; the placeholders they preempt go Pending and the node autoscaler
launches a node for them in the background. Their nodes are billed like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gpuscale.policies._config import MISSING_KEY, field_error
from gpuscale.policies.base import Decision, Delegating, Metric, MetricsSnapshot, Policy, Reason, SignalSpec
from gpuscale.policies.hpa import HpaConfig, HpaMetric, HpaMetricTarget
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.safety import with_safety


def promote_decision(
    inner: Decision, snapshot: MetricsSnapshot, pool: int, headroom: int | None = None
) -> Decision:
    """The wrapped policy's decision with the pool size (and the placeholder pods) attached, and the
    promotion made explicit."""
    desired = inner.desired_replicas
    if desired is not None and desired > snapshot.current_replicas and snapshot.standby > 0:
        increase = desired - snapshot.current_replicas
        promoted = min(snapshot.standby, increase)
        cold = increase - promoted
        note = f"promote {promoted} of {snapshot.standby} standby pod(s) at once"
        if cold:
            note += f", start {cold} cold"
        message = (
            f"{inner.reason.value}: {inner.message}; {note}; refill the pool to {pool} in the background"
        )
        return Decision(
            desired, Reason.WARM_POOL_PROMOTE, message, standby_replicas=pool, placeholder_pods=headroom
        )
    return Decision(desired, inner.reason, inner.message, standby_replicas=pool, placeholder_pods=headroom)


@dataclass(frozen=True)
class WarmPoolState:
    """The wrapped policy's state (the pool itself lives in the cluster, seen as ``snapshot.standby``)."""

    inner: Any


@dataclass(frozen=True)
class WarmPoolPolicy(Delegating):
    """A policy deciding active replicas, plus a pool of ``standby_replicas`` loaded pods."""

    inner: Policy[Any]
    standby_replicas: int
    label: str | None = None
    headroom_replicas: int = 0

    @property
    def name(self) -> str:
        return self.label or f"warm-pool({self.inner.name})"

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {spec: f"active.{key}" for spec, key in self.inner.signal_keys.items()}

    def initial_state(self) -> WarmPoolState:
        return WarmPoolState(self.inner.initial_state())

    def decide(self, snapshot: MetricsSnapshot, state: WarmPoolState) -> tuple[Decision, WarmPoolState]:
        inner_decision, inner_state = self.inner.decide(snapshot, state.inner)
        decision = promote_decision(
            inner_decision, snapshot, self.standby_replicas, self.headroom_replicas or None
        )
        return decision, WarmPoolState(inner_state)


def _nested_errors(exc: ValidationError, prefix: tuple[str | int, ...]) -> ValidationError:
    """The errors of a nested validation, relocated under ``prefix`` (``active.max_replicas``)."""
    details: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        message = str(err.get("msg", "invalid value")).replace("{", "{{").replace("}", "}}")
        kind = str(err.get("type", "value_error"))
        loc = (*prefix, *err.get("loc", ()))
        if kind == "missing":
            details.append(InitErrorDetails(type="missing", loc=loc, input={}))
        else:
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError(kind, message, err.get("ctx")),
                    loc=loc,
                    input=err.get("input"),
                )
            )
    return ValidationError.from_exception_data("policy", details)


@register_kind
class WarmPoolConfig(KindConfig):
    """Keep N loaded standby pods outside the Service and promote them on scale-up (seed 001)."""

    kind: Literal["warm-pool"] = "warm-pool"
    name: str | None = Field(
        default=None, description="Display name; defaults to warm-pool(<active policy>)."
    )
    standby_replicas: int = Field(
        ge=1, description="Loaded standby pods to keep outside the Service; required."
    )
    headroom_replicas: int = Field(
        default=0,
        ge=0,
        description="Warm-node buffer: low-priority placeholder pods, each requesting what a serving pod "
        "requests (the cluster over-provisioner pattern), so the node autoscaler keeps spare GPU nodes "
        "up; a serving or standby pod preempts one at once. Default 0 (none).",
    )
    active: dict[str, Any] | None = Field(
        default=None,
        description="The policy deciding active replicas: any policy config with its kind (not warm-pool)."
        " Absent: the shorthand below (an HPA on a per-pod target).",
    )
    metric: Literal["concurrency", "queue_length"] = Field(
        default="concurrency", description="Shorthand: the per-pod signal the active replicas follow."
    )
    target_per_replica: float | None = Field(
        default=None,
        gt=0,
        description="Shorthand: the per-pod value to aim for (HPA AverageValue); required.",
    )
    window_s: float = Field(
        default=60.0, gt=0, description="Shorthand: averaging window, seconds (default 60)."
    )
    min_replicas: int = Field(default=1, ge=1, description="Shorthand: fewest active replicas (default 1).")
    max_replicas: int | None = Field(
        default=None, ge=1, description="Shorthand: most active replicas; required."
    )

    @model_validator(mode="after")
    def _one_way_to_decide(self) -> WarmPoolConfig:
        if self.active is not None:
            for key in ("target_per_replica", "max_replicas"):
                if getattr(self, key) is not None:
                    field_error((key,), getattr(self, key), "a shorthand setting; not allowed with active")
            try:
                self.active_config()
            except ValidationError as exc:
                raise _nested_errors(exc, ("active",)) from None
            return self
        if self.target_per_replica is None:
            field_error(("target_per_replica",), MISSING_KEY)
        if self.max_replicas is None:
            field_error(("max_replicas",), MISSING_KEY)
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        return self

    def active_config(self) -> Any:
        """The wrapped policy's config: ``active`` validated by the registry, or the shorthand's HPA."""
        if self.active is not None:
            # Imported here: the registry imports this module to list it.
            from gpuscale.policies import registry

            if self.active.get("kind") == "warm-pool":
                field_error(("kind",), "warm-pool", "a warm pool cannot wrap another warm pool")
            kinds = tuple(c for c in registry.kind_configs() if c is not WarmPoolConfig)
            return registry._adapter(kinds).validate_python(self.active)
        assert self.target_per_replica is not None and self.max_replicas is not None
        return HpaConfig(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            metrics=(
                HpaMetric(
                    type="Pods",
                    metric=Metric(self.metric),
                    window_s=self.window_s,
                    target=HpaMetricTarget(type="AverageValue", average_value=self.target_per_replica),
                ),
            ),
        )

    def build(self) -> WarmPoolPolicy:
        active = self.active_config()
        inner: Policy[Any] = with_safety(active.build(), active.safety)
        return WarmPoolPolicy(inner, self.standby_replicas, self.name, self.headroom_replicas)
