"""The container image of the controller and the KEDA scaler (``scripts/build-image.sh``, docs/image.md).

The fast tests check what the image is named and pinned to. The slow one builds the image here with
no daemon and no registry (mmdebstrap, pip, umoci), inspects it, and runs it with an OCI runtime
(runc, else crun) the way the rendered Deployment runs it: as uid 65532, read-only root, no
capabilities, the ConfigMap's config and a ServiceAccount token mounted, against a real API server.
It skips only where this machine cannot build (not root, no tools) or no runtime can start even
``/usr/bin/true`` here, and says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.controller.manifests import IMAGE_NAME, default_image
from tests.controlplane import ROOT, ControlPlane, _free_port, binaries, started_plane, wait_until

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
REQUIREMENTS = ROOT / "scripts" / "image-requirements.txt"
LEFT_OUT = {"matplotlib", "simpy", "ray", "optuna", "torch", "gymnasium", "stable-baselines3", "numba"}
"""pyproject's runtime dependencies that neither ``gpuscale run`` nor ``gpuscale keda-scaler`` imports."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line.strip())
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


# ---- fast: the name and the pins ------------------------------------------------------------------


def test_manifests_controller_names_the_image_the_script_builds(tmp_path: Path) -> None:
    assert default_image() == f"{IMAGE_NAME}:{VERSION}" == f"localhost/gpuscale:{VERSION}"
    script = (ROOT / "scripts" / "build-image.sh").read_text(encoding="utf-8")
    assert f'NAME="{IMAGE_NAME}"' in script
    cfg = tmp_path / "controller.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "target": {"kind": "Deployment", "namespace": "ml", "name": "triton"},
                "pod_selector": "app=triton",
                "policy": {"kind": "static", "replicas": 2},
                "safety": {"min_replicas": 1, "max_replicas": 4},
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["manifests", "controller", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    deploy = next(o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"localhost/gpuscale:{VERSION}"
    assert pod["securityContext"]["runAsUser"] == 65532  # the image's user


def test_the_image_pins_pyprojects_versions_with_hashes() -> None:
    text = REQUIREMENTS.read_text(encoding="utf-8")
    pinned = _pins(text.splitlines())
    declared = _pins(PYPROJECT["project"]["dependencies"])
    assert set(declared) - set(pinned) == LEFT_OUT
    for name in set(declared) & set(pinned):
        assert pinned[name] == declared[name], f"{name}: image {pinned[name]} != pyproject {declared[name]}"
    assert not set(pinned) & LEFT_OUT
    entries = [b for b in re.split(r"\n(?=\S)", text) if b.strip() and not b.startswith("#")]
    assert len(entries) == len(pinned)
    assert all("--hash=sha256:" in e for e in entries), "every requirement carries its hash"


# ---- slow: build it, look inside, run it ----------------------------------------------------------


def _build(out: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    if proc.returncode == 3:  # the script's "this machine cannot build it"
        pytest.skip(f"cannot build the image here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"oci:{out}:{VERSION}"


def _blob(layout: Path, digest: str) -> Any:
    algo, hexa = digest.split(":")
    return json.loads((layout / "blobs" / algo / hexa).read_text(encoding="utf-8"))


class Runtime:
    """An OCI runtime (runc or crun) running bundles unpacked from the image, state kept in tmp."""

    def __init__(self, exe: str, state: Path) -> None:
        self.exe, self.state, self.n = exe, state, 0

    def command(
        self,
        bundle: Path,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        mounts: Sequence[tuple[Path, str]] = (),
    ) -> tuple[list[str], str]:
        """The runtime's command line for one container (the bundle's config.json written for it)
        and the container's id."""
        spec = json.loads((bundle / "config.json.image").read_text(encoding="utf-8"))
        proc = spec["process"]
        proc["terminal"] = False
        proc["args"] = args
        proc["env"] = proc["env"] + [f"{k}={v}" for k, v in (env or {}).items()]
        proc["noNewPrivileges"] = True  # allowPrivilegeEscalation: false
        proc["capabilities"] = {k: [] for k in proc.get("capabilities", {})}  # drop: [ALL]
        spec["root"]["readonly"] = True  # readOnlyRootFilesystem: true
        # the host's network, so the container reaches the test's servers on 127.0.0.1
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        spec["mounts"] = spec["mounts"] + [
            {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "ro"]}
            for src, dest in mounts
        ]
        (bundle / "config.json").write_text(json.dumps(spec), encoding="utf-8")
        self.n += 1
        cid = f"gpuscale-test-{os.getpid()}-{self.n}"
        return [self.exe, "--root", str(self.state), "run", "--bundle", str(bundle), cid], cid

    def signal(self, cid: str, sig: str) -> None:
        subprocess.run(
            [self.exe, "--root", str(self.state), "kill", cid, sig], capture_output=True, check=False
        )

    def delete(self, cid: str) -> None:
        subprocess.run(
            [self.exe, "--root", str(self.state), "delete", "--force", cid], capture_output=True, check=False
        )

    def run(
        self,
        bundle: Path,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        mounts: Sequence[tuple[Path, str]] = (),
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd, cid = self.command(bundle, args, env=env, mounts=mounts)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            self.delete(cid)


def _runtime(bundle: Path, state: Path) -> Runtime:
    """The first runtime that can start a container of this image here, else skip with each one's error."""
    errors: list[str] = []
    for exe in ("runc", "crun"):
        path = shutil.which(exe)
        if path is None:
            errors.append(f"{exe}: not installed")
            continue
        runtime = Runtime(path, state / exe)
        probe = runtime.run(bundle, ["/usr/bin/true"], timeout=60)
        if probe.returncode == 0:
            return runtime
        errors.append(f"{exe}: exit {probe.returncode}: {(probe.stderr or probe.stdout).strip()[-300:]}")
    pytest.skip("no OCI runtime can start a container on this machine: " + "; ".join(errors))


@pytest.mark.slow
def test_the_image_builds_and_runs_the_scaler_and_the_controller_here(tmp_path: Path) -> None:
    layout = tmp_path / "image"
    _build(layout)

    # -- what is in it: one tag, two layers, the config a pod relies on --------------------------
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    [desc] = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    manifest = _blob(layout, desc["digest"])
    config = _blob(layout, manifest["config"]["digest"])
    cfg = config["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["gpuscale"] and cfg["Cmd"] == ["--help"]
    assert "PYTHONUNBUFFERED=1" in cfg["Env"]
    assert cfg["Labels"]["org.opencontainers.image.ref.name"] == f"{IMAGE_NAME}:{VERSION}"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(manifest["layers"]) == 2  # the Debian base, then the venv
    packed_mb = sum(layer["size"] for layer in manifest["layers"]) / 1e6
    assert packed_mb < 250, f"{packed_mb:.0f} MB packed"

    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{VERSION}", str(bundle)], check=True, capture_output=True
    )
    (bundle / "config.json").rename(bundle / "config.json.image")
    rootfs = bundle / "rootfs"
    site = rootfs / "opt/gpuscale/lib/python3.11/site-packages"
    assert (site / "gpuscale").is_dir() and (site / "kubernetes").is_dir() and (site / "grpc").is_dir()
    left_out = (
        "torch",
        "ray",
        "optuna",
        "matplotlib",
        "simpy",
        "gymnasium",
        "stable_baselines3",
        "numba",
        "llvmlite",
    )
    for absent in (*left_out, "pip"):
        assert not (site / absent).exists(), f"{absent} is in the image"
    for tool in ("gcc", "cc", "g++", "x86_64-linux-gnu-gcc-12", "apt-get", "pip", "pip3"):
        assert not (rootfs / "usr/bin" / tool).exists(), f"/usr/bin/{tool} is in the image"
    passwd = (rootfs / "etc/passwd").read_text(encoding="utf-8")
    assert "nonroot:x:65532:65532:" in passwd

    # -- it runs: gpuscale --help as the image says, and the scaler's help ------------------------
    runtime = _runtime(bundle, tmp_path / "state")
    spec = json.loads((bundle / "config.json.image").read_text(encoding="utf-8"))
    assert spec["process"]["user"]["uid"] == 65532 and spec["process"]["args"] == ["gpuscale", "--help"]
    helped = runtime.run(bundle, spec["process"]["args"])
    assert helped.returncode == 0, helped.stderr
    assert "Usage: gpuscale" in helped.stdout and "keda-scaler" in helped.stdout
    scaler = runtime.run(bundle, ["gpuscale", "keda-scaler", "--help"])
    assert scaler.returncode == 0 and "--config" in scaler.stdout, scaler.stderr
    # what the image leaves out is one clear message, not a traceback
    benched = runtime.run(bundle, ["gpuscale", "bench"])  # the simulator, which needs Numba
    assert benched.returncode == 2, benched.stderr
    assert "gpuscale has no numba" in benched.stderr and "Traceback" not in benched.stderr, benched.stderr
    whoami = runtime.run(bundle, ["/usr/bin/id", "-u"])
    assert whoami.stdout.strip() == "65532"

    _scaler_in_the_image(runtime, bundle, tmp_path)

    # -- the controller, as the rendered Deployment runs it, against a real API server ------------
    workdir = tmp_path / "plane"
    workdir.mkdir()
    with started_plane(workdir, ["ml"], bin_dir=binaries()) as plane:
        _controller_in_the_image(plane, runtime, bundle, tmp_path)


def _controller_in_the_image(plane: ControlPlane, runtime: Runtime, bundle: Path, tmp_path: Path) -> None:
    plane.create_deployment("triton", "ml", 1)
    source = tmp_path / "controller.yaml"
    source.write_text(
        yaml.safe_dump(
            {
                "target": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "namespace": "ml",
                    "name": "triton",
                },
                "pod_selector": "app=triton",
                "policy": {"kind": "static", "replicas": 3},
                "safety": {"min_replicas": 1, "max_replicas": 8},
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["manifests", "controller", "--config", str(source)])
    assert result.exit_code == 0, result.output
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    paths = {
        "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
        "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
        "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    }
    for obj in objects:
        made = plane.request("POST", paths[obj["kind"]].format(ns=obj["metadata"]["namespace"]), obj)
        assert made.status == 201, (obj["kind"], made.body)
    by_kind = {o["kind"]: o for o in objects}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == default_image()

    # what the kubelet would mount: the ConfigMap at /etc/gpuscale, the ServiceAccount's token
    sa = by_kind["ServiceAccount"]["metadata"]["name"]
    token = plane.request(
        "POST",
        f"/api/v1/namespaces/ml/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert token.status == 201, token.body
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text(token.body["status"]["token"], encoding="utf-8")
    (secrets / "ca.crt").write_text(plane.ca_pem(), encoding="utf-8")
    (secrets / "namespace").write_text("ml", encoding="utf-8")
    pod_cfg = yaml.safe_load(by_kind["ConfigMap"]["data"]["controller.yaml"])
    pod_cfg["metrics"]["bind_address"] = "127.0.0.1"  # the host's network here: loopback only
    config_dir = tmp_path / "configmap"
    config_dir.mkdir()
    (config_dir / "controller.yaml").write_text(yaml.safe_dump(pod_cfg), encoding="utf-8")
    for d in (secrets, config_dir):
        for f in [d, *d.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)  # readable by uid 65532

    args = [*container["command"], *container["args"], "--once"]
    env = {
        "POD_NAME": "gpuscale-triton-7d9f-abcde",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(plane.port),
    }
    mounts = [(config_dir, "/etc/gpuscale"), (secrets, "/var/run/secrets/kubernetes.io/serviceaccount")]
    runs: list[subprocess.CompletedProcess[str]] = []

    def scaled() -> bool:  # the Role and its binding reach the authorizer through a watch
        runs.append(runtime.run(bundle, args, env=env, mounts=mounts))
        return runs[-1].returncode == 0

    wait_until(scaled, "the controller in the image to scale the target", 60.0)
    record = json.loads(runs[-1].stdout.strip().splitlines()[-1])
    assert (record["action"], record["written_replicas"]) == ("scaled", 3), record
    assert plane.deployment_replicas("triton", "ml") == 3


def _scaler_in_the_image(runtime: Runtime, bundle: Path, tmp_path: Path) -> None:
    """``gpuscale keda-scaler`` serves gRPC from the image, answers KEDA and stops on SIGTERM."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gpuscale.integrations._externalscaler import externalscaler_pb2 as pb
    from gpuscale.integrations._externalscaler import externalscaler_pb2_grpc as pb_grpc
    from gpuscale.integrations.keda_scaler import METRIC_NAME

    config_dir = tmp_path / "scaler"
    config_dir.mkdir()
    config_dir.chmod(0o755)
    source = {
        "kind": "static",
        "snapshot": {
            "current_replicas": 3,
            "signals": [{"metric": "queue_length", "aggregation": "total", "window_s": 15, "value": 23}],
        },
    }
    (config_dir / "scaler.yaml").write_text(
        yaml.safe_dump({"policy": "keda-queue-depth", "source": source}), encoding="utf-8"
    )
    (config_dir / "scaler.yaml").chmod(0o644)
    port = _free_port()
    cmd, cid = runtime.command(
        bundle,
        ["gpuscale", "keda-scaler", "--config", "/etc/gpuscale/scaler.yaml", "--host", "127.0.0.1",
         "--port", str(port)],
        mounts=[(config_dir, "/etc/gpuscale")],
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                assert proc.poll() is None, proc.communicate()
                try:
                    got = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                except grpc.RpcError:
                    return False
                return bool(got.status == health_pb2.HealthCheckResponse.SERVING)

            wait_until(serving, "the scaler in the image to serve", 60.0, interval_s=0.5)
            so = pb.ScaledObjectRef(name="llm", namespace="ml", scalerMetadata={"policy": "keda-queue-depth"})
            value = (
                pb_grpc.ExternalScalerStub(channel)
                .GetMetrics(pb.GetMetricsRequest(scaledObjectRef=so, metricName=METRIC_NAME), timeout=10)
                .metricValues[0]
            )
        assert value.metricValue == 5  # ceil(23 waiting / 5 per replica) from 3, as outside the image
        runtime.signal(cid, "TERM")
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"listening on 127.0.0.1:{port}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        runtime.delete(cid)
