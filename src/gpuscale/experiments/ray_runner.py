"""Simulation jobs on a Ray cluster: one Ray task per job, results streamed back as they finish.

Ray is imported here only, and only when a run asks for it (``--ray ADDRESS`` or ``runner: ray`` in a
suite): the local worker processes of :mod:`gpuscale.experiments.runner` stay the default, and the
main job never imports Ray. A job travels as data (scenario spec and policy spec, see
:class:`~gpuscale.experiments.runner.Job`); each task runs the same function a local worker runs, so
the outcomes, sorted by run key, and every file written from them are the same bytes as a local run.

Addresses: ``local`` starts a Ray instance on 127.0.0.1 for the run and stops it after; ``auto``
joins the cluster already running on this machine (``ray start --head``); anything else is a
cluster's address (``HOST:PORT`` of its head, or ``ray://HOST:10001`` through Ray Client).

A worker process that dies mid-task (killed, out of memory, its node lost) is not an error of the
job: Ray runs the task again, up to :data:`MAX_RETRIES` times, and the run still gets exactly one
outcome per job, because each outcome is read from the task's one result.

A head that goes away is noticed by the driver itself: while waiting for results it checks, about
once a second, that the head's GCS still accepts connections, and after :data:`HEAD_GRACE_S` without
it the run ends with a :class:`RayClusterError` naming the address. Ray alone would not say so: its
``ray.wait`` keeps returning nothing, and 60 s later (``gcs_rpc_server_reconnect_timeout_s``) its C++
core ends the whole process with no Python exception (measured with Ray 2.60). Jobs that finished
before are already in the run store (:mod:`gpuscale.experiments.checkpoint`), for ``--resume``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gpuscale._core.clock import Clock, SystemClock
from gpuscale._core.errors import ConfigError, GpuscaleError

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRIES = 3
"""Times a task is run again after its worker process died (Ray's own default for tasks is 3)."""

HEAD_GRACE_S = 10.0
"""How long the head's GCS may refuse connections before the run gives up on the cluster. Long enough
for a GCS that restarts (KubeRay's GCS fault tolerance brings one back within seconds), short enough
that the run ends on its own terms: Ray ends a driver whose GCS has been gone for 60 s, and
``ray.shutdown`` with a dead head took 17 s here, so 10 + 17 s leaves a margin."""

POLL_S = 1.0
"""Longest wait for a result before the head is checked again."""

PROBE_TIMEOUT_S = 2.0
"""A connection to the head that is not accepted within this counts as refused (a head behind a
network that lost it answers nothing at all)."""

FETCH_TIMEOUT_S = 30.0
"""Longest wait for a finished task's result to arrive (a large one is fetched from the node that
made it; a node lost in between would otherwise leave ``ray.get`` waiting for Ray's own timeouts)."""

NICENESS_VAR = "RAY_worker_niceness"
"""Ray's setting of its worker processes' niceness (Ray's default: 15)."""

LOCAL = "local"
AUTO = "auto"


class RayClusterError(GpuscaleError):
    """The Ray cluster could not be reached, or went away during the run."""


def head_answers(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the head at ``HOST:PORT`` (its GCS, or its Ray Client server for ``ray://``) accepts a
    TCP connection within ``timeout_s``. Only a connection: no Ray protocol, so no token is needed."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class HeadWatch:
    """Tells when the head has stopped answering for longer than ``grace_s``.

    ``check`` is called as often as the caller likes; it probes at most once per ``every_s`` of the
    clock and raises :class:`RayClusterError` once the probes have failed for ``grace_s`` (a probe
    that answers starts the count again). The probe and the clock are inputs, so the rule is tested
    on a timeline."""

    def __init__(
        self,
        address: str,
        probe: Callable[[], bool],
        clock: Clock,
        *,
        grace_s: float = HEAD_GRACE_S,
        every_s: float = POLL_S,
    ) -> None:
        self.address = address
        self.probe = probe
        self.clock = clock
        self.grace_s = grace_s
        self.every_s = every_s
        self._last_probe: float | None = None
        self._silent_since: float | None = None

    def check(self, finished: int = 0, total: int = 0) -> None:
        now = self.clock.monotonic()
        if self._last_probe is not None and now - self._last_probe < self.every_s:
            return
        self._last_probe = now
        if self.probe():
            self._silent_since = None
            return
        if self._silent_since is None:
            self._silent_since = now
        if now - self._silent_since >= self.grace_s:
            done = f"; {finished} of {total} tasks had finished" if total else ""
            raise RayClusterError(
                f"--ray {self.address}: lost the cluster's head (it has not accepted a connection for "
                f"{now - self._silent_since:.0f} s){done}"
            )


def check_address(address: str, source: str = "--ray") -> str:
    """``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; ConfigError otherwise."""
    text = address.strip()
    if text in (LOCAL, AUTO):
        return text
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or any(c.isspace() for c in rest)
    ):
        raise ConfigError(
            source,
            None,
            address,
            "allowed: local (start Ray on this machine for the run), auto (join the cluster running "
            "here), or a head's address HOST:PORT (ray://HOST:PORT through Ray Client)",
        )
    return text


def ray_available() -> bool:
    """Whether Ray is installed (``pip install 'ray[default]'``)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


class RayPool:
    """A connection to a Ray cluster for one run; use as a context manager.

    ``num_cpus`` sizes a ``local`` instance (default: the machine's cores); ``temp_dir`` is where a
    ``local`` instance keeps its session files (default Ray's own).
    """

    def __init__(
        self,
        address: str,
        *,
        num_cpus: int | None = None,
        temp_dir: Path | None = None,
        clock: Clock | None = None,
        head_grace_s: float = HEAD_GRACE_S,
    ) -> None:
        self.address = check_address(address)
        self.num_cpus = num_cpus
        self.temp_dir = temp_dir
        self.clock = clock or SystemClock()
        self.head_grace_s = head_grace_s
        self.dashboard_url: str | None = None
        self.head_address: str | None = None
        """Where the head is checked: its GCS (``HOST:PORT``), or the Ray Client server (``ray://``)."""
        self._ray: Any = None
        self._remote: dict[Callable[..., Any], Any] = {}

    def __enter__(self) -> RayPool:
        if not ray_available():
            raise ConfigError(
                "--ray",
                None,
                self.address,
                "Ray is not installed; install it with pip install 'ray[default]'",
            )
        if self.address == LOCAL:
            # keep a local instance on the loopback address: Ray otherwise binds the node to eth0's
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        kwargs: dict[str, Any] = {
            "log_to_driver": False,
            "configure_logging": False,
            # Ray starts its workers at niceness 15, below everything else on the machine, so on a
            # machine that does other work too a simulation on Ray waits while one in a local worker
            # process runs. The job's tasks ask for the local workers' priority (its runtime
            # environment's variables are the workers' own; RAY_worker_niceness set here wins).
            "runtime_env": {"env_vars": {NICENESS_VAR: os.environ.get(NICENESS_VAR, "0")}},
        }
        if self.address == LOCAL:
            kwargs.update(
                address="local",
                num_cpus=self.num_cpus,
                include_dashboard=False,
                _temp_dir=None if self.temp_dir is None else str(self.temp_dir),
            )
        else:
            kwargs["address"] = self.address
        try:
            context = ray.init(**kwargs)
        except (OSError, RuntimeError, ValueError) as exc:  # ConnectionError is an OSError
            raise RayClusterError(f"--ray {self.address}: cannot reach a Ray cluster ({exc})") from None
        self._ray = ray
        url = getattr(context, "dashboard_url", None)
        self.dashboard_url = str(url) if url else None
        if self.address.startswith("ray://"):
            self.head_address = self.address
        else:
            self.head_address = str(ray.get_runtime_context().gcs_address)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """``(index, fn(item))`` for every item, in the order the tasks finish."""
        ray = self._ray
        assert ray is not None, "RayPool used outside its with block"
        remote = self._remote.get(fn)
        if remote is None:
            # a dead worker is a system failure: Ray re-runs the task; an exception the function
            # raises is the job's own and is not retried (run_job turns bad input into an outcome)
            remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False, num_cpus=1)(fn)
            self._remote[fn] = remote
        pending = {remote.remote(item): i for i, item in enumerate(items)}
        head = self.head_address or self.address
        watch = HeadWatch(self.address, lambda: head_answers(head), self.clock, grace_s=self.head_grace_s)
        while pending:
            watch.check(len(items) - len(pending), len(items))
            try:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            except (ray.exceptions.RayError, ConnectionError) as exc:  # Ray Client lost its server
                raise RayClusterError(
                    f"--ray {self.address}: lost the cluster ({_first_line(exc)})"
                ) from None
            for ref in ready:
                index = pending.pop(ref)
                try:
                    value = ray.get(ref, timeout=FETCH_TIMEOUT_S)
                except ray.exceptions.RayTaskError as exc:
                    # the function itself raised: the same error a local run raises
                    raise exc.as_instanceof_cause() from None
                except ray.exceptions.RayError as exc:
                    raise RayClusterError(
                        f"--ray {self.address}: the cluster lost a task after {MAX_RETRIES} retries or went "
                        f"away ({_first_line(exc)})"
                    ) from None
                yield index, value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
