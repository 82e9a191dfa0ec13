"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's ``leaderelection`` semantics.

Several replicas of ``gpuscale run`` may run; only the one holding the Lease reads metrics and writes
the scale. One call of :meth:`LeaderElector.step` is one round of client-go's ``tryAcquireOrRenew``,
and the controller's loop calls it every ``retry_period_s``:

1. read the Lease; none yet: create it naming us (an ``AlreadyExists`` means another candidate won);
2. when the record (holder, duration, times, transitions) differs from the one we last saw, remember
   it and the moment we saw it -- ``observed_time``, on **our own** clock;
3. someone else holds it and ``observed_time + leaseDurationSeconds`` is still ahead of our clock:
   stand by. We never compare the Lease's ``renewTime`` with our clock, so clocks that disagree
   about the time of day do not matter, only clocks that run at different *rates*;
4. otherwise write the record naming us, with the ``resourceVersion`` we read: a ``409 Conflict``
   means another candidate wrote first this round, so we stand by. On a takeover
   ``leaseTransitions`` grows by one; on a renewal ``acquireTime`` and the count are kept.

**Stepping down.** A leader counts its renewal deadline from the start of its last successful
renewal: after ``renew_deadline_s`` without one it stops acting (:attr:`LeaderElector.is_leader`
turns false even if no round ran in between). A standby cannot take over before
``lease_duration_s`` after it saw that same renewal, which happened after the request started, so
with the defaults the old leader has stopped at least 15 - 10 = 5 s before anyone else may act.
(client-go measures the deadline from the start of the renewal round that fails, at most one retry
period after the last success; measuring from the success itself is the stricter choice.)

**Release.** :meth:`LeaderElector.release` (client-go's ``ReleaseOnCancel``) writes the record with
an empty ``holderIdentity`` and a 1-s duration, so a standby takes over at its next round instead of
waiting out the lease.

API errors are mapped as in :mod:`gpuscale.controller.target`: a 403 becomes
:class:`~gpuscale.controller.target.Forbidden` naming the verb and ``leases``; the last one is kept
in :attr:`LeaderElector.last_error` (a round never raises). Unlike client-go there is no jitter on
the retry period: a handful of replicas do not stampede, and tests stay exact.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gpuscale._core.clock import Clock
from gpuscale._core.errors import GpuscaleError, PermanentError, TemporaryError
from gpuscale.controller.target import call_api

log = logging.getLogger("gpuscale.controller.leader")

T = TypeVar("T")


class LostRace(TemporaryError):
    """Another candidate wrote the Lease between our read and our write (409 / AlreadyExists)."""


def default_identity() -> str:
    """``$POD_NAME`` (the downward API sets it in the rendered Deployment), else ``hostname_pid``."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


class MicroTime(datetime):
    """A ``metav1.MicroTime``: serialised as RFC 3339 with exactly six fractional digits, in UTC.

    The API server parses MicroTime with a fixed six-digit layout, so ``1000.0`` must be written
    ``1970-01-01T00:16:40.000000Z``; ``datetime.isoformat`` (what the client sends) would drop a
    zero fraction and the API server would answer 400.
    """

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def micro_time(seconds: float) -> str:
    """``seconds`` since the epoch as the API server writes a MicroTime."""
    return MicroTime.fromtimestamp(seconds, UTC).isoformat()


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder (client-go's ``LeaderElectionRecord``)."""

    holder: str
    lease_duration_s: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int

    @classmethod
    def of(cls, lease: Any) -> LeaseRecord:
        spec = lease.spec
        return cls(
            holder=(spec.holder_identity or "") if spec else "",
            lease_duration_s=int((spec.lease_duration_seconds or 0) if spec else 0),
            acquire_time=spec.acquire_time if spec else None,
            renew_time=spec.renew_time if spec else None,
            transitions=int((spec.lease_transitions or 0) if spec else 0),
        )


class LeaderElector:
    """One candidate for the Lease ``namespace/name``, judging time on ``clock`` (see the module doc)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.timeout_s = timeout_s
        self._coord = k8s.CoordinationV1Api(api)
        self._observed: LeaseRecord | None = None
        self._observed_time = 0.0  # monotonic, when _observed last changed
        self._metadata: Any = None
        self._renewed_at: float | None = None  # monotonic start of the last successful write naming us
        self._leading = False
        self.last_error: GpuscaleError | None = None
        self.transitions_seen = 0
        """How often this candidate became leader."""

    def __str__(self) -> str:
        return f"lease {self.namespace}/{self.name} as {self.identity}"

    # ------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while we hold the Lease and renewed it less than ``renew_deadline_s`` ago."""
        if not self._leading or self._renewed_at is None:
            return False
        return self.clock.monotonic() - self._renewed_at < self.renew_deadline_s

    @property
    def leader(self) -> str:
        """The holder we last saw ('' when none)."""
        return self._observed.holder if self._observed is not None else ""

    @property
    def observed(self) -> LeaseRecord | None:
        return self._observed

    def _observe(self, record: LeaseRecord, lease: Any) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_time = self.clock.monotonic()
        self._metadata = lease.metadata  # its resourceVersion makes our next write conditional

    def _lease_valid(self, now: float) -> bool:
        """client-go's ``isLeaseValid``: ``observedTime + leaseDurationSeconds`` is after ``now``."""
        assert self._observed is not None
        return self._observed_time + self._observed.lease_duration_s > now

    # ------------------------------------------------------------------------------------------
    # one round
    # ------------------------------------------------------------------------------------------

    def step(self) -> bool:
        """One round of acquire-or-renew; returns :attr:`is_leader` after it. Never raises."""
        started = self.clock.monotonic()
        try:
            won = self._try_acquire_or_renew(started)
            self.last_error = None
        except LostRace as exc:
            won = False
            self.last_error = None
            log.info("%s: %s", self, exc)
        except GpuscaleError as exc:
            won = False
            self.last_error = exc
            log.warning("%s: %s", self, exc)
        except Exception as exc:  # nothing escapes the loop
            won = False
            self.last_error = PermanentError(f"leader election failed unexpectedly: {exc!r}")
            log.exception("%s: leader election failed unexpectedly", self)
        if won:
            if not self._leading:
                self.transitions_seen += 1
                log.info("%s: became leader", self)
            self._leading = True
            self._renewed_at = started
        elif self._leading and not self.is_leader:
            self._leading = False
            log.warning(
                "%s: could not renew for %g s (renew deadline); stopped acting", self, self.renew_deadline_s
            )
        return self.is_leader

    def _try_acquire_or_renew(self, started: float) -> bool:
        now_wall = self.clock.now()
        duration = max(1, int(self.lease_duration_s))
        lease = self._call("get", lambda: self._read())
        if lease is None:
            spec = self._spec(self.identity, duration, now_wall, now_wall, 0)
            body = k8s.V1Lease(
                api_version="coordination.k8s.io/v1",
                kind="Lease",
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=spec,
            )
            made = self._call(
                "create",
                lambda: self._coord.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.timeout_s
                ),
            )
            self._observe(LeaseRecord.of(made), made)
            return True
        old = LeaseRecord.of(lease)
        self._observe(old, lease)
        mine = old.holder == self.identity
        if old.holder and not mine and self._lease_valid(started):
            return False  # held by another, and not yet expired on our clock
        if mine:
            acquire = old.acquire_time.timestamp() if old.acquire_time else now_wall
            spec = self._spec(self.identity, duration, acquire, now_wall, old.transitions)
        else:
            spec = self._spec(self.identity, duration, now_wall, now_wall, old.transitions + 1)
        written = self._update(spec)
        self._observe(LeaseRecord.of(written), written)
        return True

    def release(self) -> bool:
        """Give the Lease up if we hold it (holder cleared, 1-s duration); True when nothing is held."""
        if self._observed is None or self._observed.holder != self.identity:
            self._leading = False
            return True
        self._leading = False
        now_wall = self.clock.now()
        spec = self._spec("", 1, now_wall, now_wall, self._observed.transitions)
        try:
            written = self._update(spec)
        except GpuscaleError as exc:
            self.last_error = exc
            log.warning("%s: could not release: %s", self, exc)
            return False
        self._observe(LeaseRecord.of(written), written)
        log.info("%s: released", self)
        return True

    # ------------------------------------------------------------------------------------------
    # API calls
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _spec(holder: str, duration: int, acquire: float, renew: float, transitions: int) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=duration,
            acquire_time=MicroTime.fromtimestamp(acquire, UTC),
            renew_time=MicroTime.fromtimestamp(renew, UTC),
            lease_transitions=transitions,
        )

    def _read(self) -> Any:
        try:
            return self._coord.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _update(self, spec: k8s.V1LeaseSpec) -> Any:
        """Replace the Lease's spec, conditional on the resourceVersion we last saw (409 otherwise)."""
        metadata = self._metadata or k8s.V1ObjectMeta(name=self.name, namespace=self.namespace)
        body = k8s.V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=metadata, spec=spec)
        return self._call(
            "update",
            lambda: self._coord.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self.timeout_s
            ),
        )

    def _call(self, verb: str, fn: Callable[[], T]) -> T:
        def lost(detail: str) -> Exception:
            return LostRace(f"{verb} lease {self.namespace}/{self.name}: another candidate won ({detail})")

        return call_api(verb, "leases", self.namespace, fn, {409: lost})
