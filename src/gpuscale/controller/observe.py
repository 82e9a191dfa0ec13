"""The controller's own observability: Prometheus metrics, ``/healthz``, ``/readyz``.

Metrics live in a :class:`~prometheus_client.CollectorRegistry` of their own (never the global
one: several controllers may share a process, as in the tests):

=============================================  ======================================================
``gpuscale_controller_desired_replicas``       what the policy wants (a hold: the current count)
``gpuscale_controller_current_replicas``       the target's ``spec.replicas`` as read
``gpuscale_controller_written_replicas``       the last count written to the scale subresource
``gpuscale_controller_decisions_total``        policy decisions, by ``reason``
``gpuscale_controller_errors_total``           failures, by ``kind`` (temporary, permanent, unexpected,
                                               metrics_unavailable)
                                               and ``stage`` (tick, election)
``gpuscale_controller_tick_duration_seconds``  how long one tick took (histogram)
``gpuscale_controller_is_leader``              1 while this replica acts, else 0
``gpuscale_controller_last_success_timestamp_seconds``  wall time of the last successful tick
``gpuscale_controller_consecutive_failures``   failed ticks in a row (0 after a success)
``gpuscale_controller_next_wait_seconds``      the wait before the next tick (grows with backoff)
``gpuscale_controller_signal_value``           each signal the policy read, by ``signal`` (its key,
                                               e.g. ``gpu_util:mean:60s``); absent while missing
``gpuscale_controller_signal_age_seconds``     the age of that value (newest sample behind it)
``gpuscale_controller_signal_missing_total``   ticks on which a signal had no value, by ``signal``
=============================================  ======================================================

The replica gauges carry a ``target`` label (``namespace/Kind/name``), so they appear only once a
value is known: no made-up zero before the first read.

**Health.** :class:`LoopStatus` is written by the loop and read by the HTTP server, on the
controller's clock. ``/healthz`` answers 200 while the loop is alive: the last tick started no
longer ago than the wait then planned (the interval, or the backoff) plus two intervals of slack.
``/readyz`` answers 200 once a tick succeeded within that same span, or while a standby's last
election round reached the API server; 503 before the first tick and after a failed one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gpuscale._core.clock import Clock
from gpuscale._core.errors import PermanentError

if TYPE_CHECKING:
    from gpuscale.controller.loop import TickOutcome

log = logging.getLogger("gpuscale.controller.observe")

SLACK_INTERVALS = 2.0
"""Intervals of slack past the planned wait before the loop counts as stuck."""


class ControllerMetrics:
    """The controller's Prometheus metrics (see the module doc), in ``registry``."""

    def __init__(self, target: str, registry: CollectorRegistry | None = None) -> None:
        self.target = target
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.desired = Gauge(
            "gpuscale_controller_desired_replicas",
            "Replicas the policy wants (on a hold: the current count).",
            ["target"],
            registry=r,
        )
        self.current = Gauge(
            "gpuscale_controller_current_replicas",
            "The target's spec.replicas as read.",
            ["target"],
            registry=r,
        )
        self.written = Gauge(
            "gpuscale_controller_written_replicas",
            "The last replica count written to the scale subresource.",
            ["target"],
            registry=r,
        )
        self.decisions = Counter(
            "gpuscale_controller_decisions", "Policy decisions, by reason.", ["reason"], registry=r
        )
        self.errors = Counter(
            "gpuscale_controller_errors",
            "Failures, by kind (temporary, permanent, unexpected, metrics_unavailable) and stage (tick, election).",
            ["kind", "stage"],
            registry=r,
        )
        self.duration = Histogram(
            "gpuscale_controller_tick_duration_seconds",
            "Seconds one tick took (read, decide, write).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.is_leader = Gauge(
            "gpuscale_controller_is_leader", "1 while this replica acts, else 0.", registry=r
        )
        self.last_success = Gauge(
            "gpuscale_controller_last_success_timestamp_seconds",
            "Wall-clock time of the last successful tick (0: none yet).",
            registry=r,
        )
        self.failures = Gauge(
            "gpuscale_controller_consecutive_failures", "Failed ticks in a row.", registry=r
        )
        self.next_wait = Gauge(
            "gpuscale_controller_next_wait_seconds",
            "Seconds the loop waits before the next tick (the interval, longer under backoff).",
            registry=r,
        )
        self.signal_value = Gauge(
            "gpuscale_controller_signal_value",
            "The value of each signal the policy read on the last tick (absent while missing).",
            ["signal"],
            registry=r,
        )
        self.signal_age = Gauge(
            "gpuscale_controller_signal_age_seconds",
            "Age of each signal's value on the last tick: now minus its newest sample.",
            ["signal"],
            registry=r,
        )
        self.signal_missing = Counter(
            "gpuscale_controller_signal_missing",
            "Ticks on which a signal had no value (no series, NaN, Prometheus down ...).",
            ["signal"],
            registry=r,
        )

    def observe_tick(self, outcome: TickOutcome, duration_s: float) -> None:
        self.duration.observe(max(0.0, duration_s))
        if outcome.snapshot is not None:
            self._observe_signals(outcome)
        if outcome.counts is not None:
            self.current.labels(target=self.target).set(outcome.counts.current_replicas)
        if outcome.decision is not None:
            self.decisions.labels(reason=outcome.decision.reason.value).inc()
            desired = outcome.decision.desired_replicas
            if desired is None and outcome.counts is not None:
                desired = outcome.counts.current_replicas
            if desired is not None:
                self.desired.labels(target=self.target).set(desired)
        if outcome.action == "scaled" and outcome.replicas is not None:
            self.written.labels(target=self.target).set(outcome.replicas)
        if outcome.action == "error" or outcome.error_kind is not None:
            self.errors.labels(kind=outcome.error_kind or "unexpected", stage="tick").inc()
        elif outcome.action != "standby":
            self.last_success.set(outcome.time_s)

    def _observe_signals(self, outcome: TickOutcome) -> None:
        assert outcome.snapshot is not None
        for spec, value in outcome.snapshot.signals.items():
            key = spec.key
            if value.value is None:
                self.signal_missing.labels(signal=key).inc()
                for gauge in (self.signal_value, self.signal_age):  # no stale value on show
                    with contextlib.suppress(KeyError):  # not shown yet
                        gauge.remove(key)
                continue
            self.signal_value.labels(signal=key).set(value.value)
            if math.isfinite(value.age_s):
                self.signal_age.labels(signal=key).set(value.age_s)

    def election_error(self, kind: str) -> None:
        self.errors.labels(kind=kind, stage="election").inc()


@dataclass
class LoopStatus:
    """What the loop last did, on the controller's monotonic clock; read by ``/healthz`` and ``/readyz``."""

    interval_s: float
    started_at: float
    last_tick_started: float | None = None
    last_success: float | None = None
    failures: int = 0
    next_wait_s: float | None = None
    standby: bool = False
    election_error: str | None = None
    last_error: str | None = None

    def _limit(self) -> float:
        planned = self.next_wait_s if self.next_wait_s is not None else self.interval_s
        return planned + SLACK_INTERVALS * self.interval_s

    def healthy(self, now: float) -> tuple[bool, str]:
        """Alive: a tick started within the planned wait plus two intervals (or, before the first
        tick, the loop started that recently)."""
        ref = self.last_tick_started if self.last_tick_started is not None else self.started_at
        age, limit = now - ref, self._limit()
        what = "last tick started" if self.last_tick_started is not None else "started, no tick yet,"
        if age > limit:
            return False, f"stuck: {what} {age:.1f} s ago (limit {limit:.1f} s)"
        return True, f"alive: {what} {age:.1f} s ago"

    def ready(self, now: float) -> tuple[bool, str]:
        """Ready: healthy, and the last tick succeeded recently or the replica stands by healthily."""
        ok, why = self.healthy(now)
        if not ok:
            return False, why
        if self.last_tick_started is None:
            return False, "no tick yet"
        if self.failures:
            return False, f"{self.failures} failed tick(s) in a row: {self.last_error}"
        if self.standby:
            if self.election_error is not None:
                return False, f"standing by, but the election fails: {self.election_error}"
            return True, "standing by"
        if self.last_success is None or now - self.last_success > self._limit():
            return False, "no recent successful tick"
        return True, f"last tick succeeded {now - self.last_success:.1f} s ago"


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP on ``host:port`` (0: a free port), in a
    daemon thread; health is judged on ``clock``."""

    def __init__(
        self, registry: CollectorRegistry, status: LoopStatus, clock: Clock, *, host: str, port: int
    ) -> None:
        self.registry = registry
        self.status = status
        self.clock = clock
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve; returns the bound port. PermanentError if the address is unusable."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    now = server.clock.monotonic()
                    check = server.status.healthy if path == "/healthz" else server.status.ready
                    ok, why = check(now)
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        try:
            self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise PermanentError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="gpuscale-controller-http", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
