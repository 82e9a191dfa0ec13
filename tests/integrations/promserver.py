"""A real Prometheus for tests: Debian's ``prometheus`` (``scripts/prometheus.sh`` installs it if
missing), started on 127.0.0.1 with a free port and a temporary TSDB, scraping every second a test
exporter (prometheus-client, in this process, on 127.0.0.1) whose values the test sets.

The exporter serves DCGM-, Triton-, vLLM- and kube-state-metrics-named series for two pods,
``ml/llm-0`` and ``ml/llm-1``, labelled ``namespace`` and ``pod`` as Prometheus' Kubernetes service
discovery labels them. :func:`scraping` starts a Prometheus on an exporter and waits for its first
scrape.
"""

from __future__ import annotations

import math
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gpuscale._core.clock import SystemClock

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ml"
PODS = ("llm-0", "llm-1")
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CLOCK = SystemClock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "prometheus.sh")], check=True, capture_output=True, text=True, timeout=600
    )
    return out.stdout.strip().splitlines()[-1]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = CLOCK.monotonic() + timeout_s
    while not check():
        if CLOCK.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


class Exporter:
    """The test exporter: set a value and the next scrape (within 1 s) carries it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "pod"]
        r = self.registry
        self.gpu_util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU util %", labels, registry=r)
        self.fb_used = Gauge("DCGM_FI_DEV_FB_USED", "FB used MiB", labels, registry=r)
        self.fb_free = Gauge("DCGM_FI_DEV_FB_FREE", "FB free MiB", labels, registry=r)
        # Triton names this counter without _total; a gauge keeps the name as Triton exposes it.
        self.triton_success = Gauge("nv_inference_request_success", "Triton successes", labels, registry=r)
        self.vllm_waiting = Gauge("vllm:num_requests_waiting", "vLLM waiting", labels, registry=r)
        self.vllm_success = Counter("vllm:request_success", "vLLM successes", labels, registry=r)
        self.vllm_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "vLLM e2e latency",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        ksm = ["namespace", "deployment"]
        self.spec_replicas = Gauge("kube_deployment_spec_replicas", "spec", ksm, registry=r)
        self.ready_replicas = Gauge("kube_deployment_status_replicas_ready", "ready", ksm, registry=r)
        self.status_replicas = Gauge("kube_deployment_status_replicas", "pods", ksm, registry=r)
        for pod in PODS:
            for metric in (self.gpu_util, self.fb_used, self.fb_free, self.triton_success, self.vllm_waiting):
                metric.labels(NAMESPACE, pod).set(0)
            self.vllm_success.labels(NAMESPACE, pod)
            self.vllm_latency.labels(NAMESPACE, pod)
        self._http: Any = None
        self.port = 0

    def start(self) -> int:
        """Serve ``/metrics`` on 127.0.0.1 (a free port) in the classic text format.

        Not prometheus-client's ``start_http_server``: asked for OpenMetrics (as Prometheus asks),
        prometheus-client 0.26 escapes ``vllm:num_requests_waiting`` to ``vllm_num_requests_waiting``,
        and the test needs the names as the runtimes publish them.
        """
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="test-exporter", daemon=True).start()
        self.port = int(self._http.server_port)
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Exporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class WebSecurity:
    """What Prometheus' ``--web.config.file`` asks of clients: TLS with this self-signed certificate
    (for 127.0.0.1; it is its own CA) and HTTP basic authentication as ``username``/``password``."""

    cert: Path
    key: Path
    username: str
    password: str

    @classmethod
    def create(cls, workdir: Path, username: str = "gpuscale", password: str = "s3cret") -> WebSecurity:
        cert, key = workdir / "tls.crt", workdir / "tls.key"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        return cls(cert, key, username, password)

    def config(self) -> str:
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        return (
            f"tls_server_config: {{cert_file: {self.cert}, key_file: {self.key}}}\n"
            f"basic_auth_users: {{{self.username}: '{hashed}'}}\n"
        )


class Prometheus:
    """Debian's Prometheus on 127.0.0.1, scraping ``targets`` every ``scrape_interval_s`` (default
    1 s); with ``web``, only over TLS and with basic authentication. :meth:`stop` then
    :meth:`start` brings a new server up on the same port."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        targets: list[str],
        *,
        scrape_interval_s: float = 1.0,
        web: WebSecurity | None = None,
    ) -> None:
        if not scrape_interval_s >= 0.001:
            raise ValueError(f"scrape_interval_s {scrape_interval_s!r}: must be at least 1 ms")
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval_s = scrape_interval_s
        self.web = web
        self.port = free_port()
        self.url = f"{'https' if web else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"
        self._http = (
            httpx.Client(
                verify=ssl.create_default_context(cafile=str(web.cert)),
                auth=(web.username, web.password),
                timeout=5.0,
            )
            if web
            else httpx.Client(timeout=5.0)
        )

    def start(self, timeout_s: float = 20.0) -> None:
        config = self.workdir / "prometheus.yml"
        targets = ", ".join(f'"{t}"' for t in self.targets)
        every = f"{round(self.scrape_interval_s * 1000)}ms"
        config.write_text(
            f"global: {{scrape_interval: {every}, evaluation_interval: {every}, scrape_timeout: {every}}}\n"
            "scrape_configs:\n"
            "  - job_name: exporter\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n",
            encoding="utf-8",
        )
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        if self.web is not None:
            web_config = self.workdir / "web.yml"
            web_config.write_text(self.web.config(), encoding="utf-8")
            args.append(f"--web.config.file={web_config}")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._ready, timeout_s, f"Prometheus ready on {self.url} (log: {self.log})")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return self._http.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def query(self, text: str, at_s: float | None = None) -> list[dict[str, Any]]:
        """The raw result of an instant query (test-side, to check the source against)."""
        params = {"query": text}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        body = self._http.get(f"{self.url}/api/v1/query", params=params).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, text: str, at_s: float | None = None) -> float:
        result = self.query(text, at_s)
        return float(result[0]["value"][1]) if len(result) == 1 else math.nan

    def wait_settled(self, selector: str, value: float, window_s: float, timeout_s: float = 15.0) -> float:
        """Wait until every sample of ``selector`` in the last ``window_s`` equals ``value``; the time."""

        def settled() -> bool:
            lo = self.value(f"min_over_time({selector}[{window_s:g}s])")
            hi = self.value(f"max_over_time({selector}[{window_s:g}s])")
            n = self.value(f"count_over_time({selector}[{window_s:g}s])")
            return lo == value == hi and n >= 2

        wait_until(settled, timeout_s, f"{selector} settled at {value} over {window_s:g} s")
        return CLOCK.now()

    def wait_scraped(self, selector: str, value: float, timeout_s: float = 10.0) -> float:
        """Wait until the newest sample of ``selector`` is ``value``; the time."""
        wait_until(lambda: self.value(selector) == value, timeout_s, f"{selector} == {value}")
        return CLOCK.now()


@contextmanager
def scraping(
    exporter: Exporter, workdir: Path, *, scrape_interval_s: float = 1.0, web: WebSecurity | None = None
) -> Iterator[Prometheus]:
    """A started :class:`Prometheus` in ``workdir`` that has scraped ``exporter`` once; stopped on exit."""
    server = Prometheus(
        prometheus_binary(),
        workdir,
        [f"127.0.0.1:{exporter.port}"],
        scrape_interval_s=scrape_interval_s,
        web=web,
    )
    try:
        server.start()
        wait_until(lambda: server.value('up{job="exporter"}') == 1.0, 15.0, "the exporter scraped")
        yield server
    finally:
        server.stop()
