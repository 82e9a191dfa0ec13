"""A real Kubernetes control plane for tests: Debian's etcd and a kube-apiserver built from Debian's
source package (``scripts/k8s-control-plane.sh``), started on 127.0.0.1 with free ports and stopped
afterwards. No kubelet: objects are stored, validated and admitted exactly as on a cluster.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "gpuscale-test-admin-token"
VIEWER_TOKEN = "gpuscale-test-viewer-token"
"""A user ``viewer`` with no rights until a test binds a Role to it (RBAC denials)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binaries() -> Path:
    """The folder with kube-apiserver and etcd (built once per machine, then cached)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "k8s-control-plane.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Response:
    status: int
    body: dict[str, Any]


class ControlPlane:
    """etcd + kube-apiserver on loopback; ``request`` talks to the API server as an admin."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._ctx: ssl.SSLContext | None = None

    def _etcd(self) -> str:
        local = self.bin_dir / "etcd"
        return str(local) if local.exists() else (shutil.which("etcd") or "etcd")

    def start(self, timeout_s: float = 60.0) -> None:
        w = self.workdir
        client, peer = _free_port(), _free_port()
        etcd_log = (w / "etcd.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [
                    self._etcd(), "--name", "default", "--data-dir", str(w / "etcd-data"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                ],
                stdout=etcd_log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        subprocess.run(
            ["openssl", "genrsa", "-out", str(w / "sa.key"), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (w / "tokens.csv").write_text(
            f"{TOKEN},admin,admin,system:masters\n{VIEWER_TOKEN},viewer,viewer\n", encoding="utf-8"
        )
        api_log = (w / "apiserver.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [
                    str(self.bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{client}",
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}", "--insecure-port=0",
                    f"--cert-dir={w / 'certs'}", f"--token-auth-file={w / 'tokens.csv'}",
                    "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/24",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={w / 'sa.pub'}",
                    f"--service-account-signing-key-file={w / 'sa.key'}",
                    "--allow-privileged=true",
                ],
                stdout=api_log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s  # noqa: TID251 - a test fixture waiting on a real process
        while time.monotonic() < deadline:  # noqa: TID251
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"control plane exited; see {w}/etcd.log and {w}/apiserver.log")
            try:
                if self.request("GET", "/readyz").status == 200:
                    return
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready within {timeout_s} s; see {w}/apiserver.log")

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            # the API server's self-signed CA is the second certificate of its serving bundle
            bundle = (self.workdir / "certs" / "apiserver.crt").read_text(encoding="utf-8")
            certs = [
                "-----BEGIN CERTIFICATE-----" + c for c in bundle.split("-----BEGIN CERTIFICATE-----")[1:]
            ]
            ctx = ssl.create_default_context(cadata="".join(certs[1:] or certs))
            ctx.check_hostname = False
            self._ctx = ctx
        return self._ctx

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=10) as resp:
                raw = resp.read()
                return Response(resp.status, json.loads(raw) if raw.strip().startswith(b"{") else {})
        except urllib.error.HTTPError as err:
            raw = err.read()
            return Response(err.code, json.loads(raw) if raw.strip().startswith(b"{") else {})

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
