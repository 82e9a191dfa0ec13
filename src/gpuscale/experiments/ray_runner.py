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
outcome per job, because each outcome is read from the task's one result. A cluster that goes away
ends the run with a :class:`RayClusterError` naming the address.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gpuscale._core.errors import ConfigError, GpuscaleError

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRIES = 3
"""Times a task is run again after its worker process died (Ray's own default for tasks is 3)."""

LOCAL = "local"
AUTO = "auto"


class RayClusterError(GpuscaleError):
    """The Ray cluster could not be reached, or went away during the run."""


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

    def __init__(self, address: str, *, num_cpus: int | None = None, temp_dir: Path | None = None) -> None:
        self.address = check_address(address)
        self.num_cpus = num_cpus
        self.temp_dir = temp_dir
        self.dashboard_url: str | None = None
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

        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
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
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    # the function itself raised: the same error a local run raises
                    raise exc.as_instanceof_cause() from None
                except ray.exceptions.RayError as exc:
                    raise RayClusterError(
                        f"--ray {self.address}: the cluster lost a task after {MAX_RETRIES} retries or went "
                        f"away ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                    ) from None
                yield index, value
