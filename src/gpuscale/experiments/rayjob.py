"""``gpuscale manifests rayjob``: a KubeRay RayJob that runs a compare suite on a Ray cluster in
Kubernetes, with the project's image on the head and the workers.

KubeRay creates the cluster (one head, ``workers`` worker pods), runs the entrypoint on the head
(``gpuscale compare --suite ... --ray auto``: the driver joins the cluster it runs in, one Ray task
per scenario × policy × seed), and deletes the cluster when the job has finished. The suite travels in
a ConfigMap mounted on the head; built-in scenario and preset names work as they are, files named in
the suite must be in the image or a mounted volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SUITE_MOUNT = "/etc/gpuscale"
RESULTS = "/results"
RAY_VERSION = "2.60.0"
"""The Ray version in the image (pinned in pyproject.toml); KubeRay wants to know it."""


def render_rayjob(
    suite_path: Path,
    suite_text: str,
    *,
    name: str,
    namespace: str,
    image: str,
    workers: int,
    cpus_per_worker: int,
) -> list[dict[str, Any]]:
    """The ConfigMap holding the suite and the RayJob that runs it."""

    def labels() -> dict[str, str]:
        return {"app.kubernetes.io/name": "gpuscale", "app.kubernetes.io/component": "compare"}

    def container(role: str, cpus: int) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": f"ray-{role}",
            "image": image,
            "resources": {
                "requests": {"cpu": str(cpus), "memory": f"{2 * cpus}Gi"},
                "limits": {"cpu": str(cpus), "memory": f"{2 * cpus}Gi"},
            },
        }
        if role == "head":
            c["ports"] = [
                {"containerPort": 6379, "name": "gcs-server"},
                {"containerPort": 8265, "name": "dashboard"},
                {"containerPort": 10001, "name": "client"},
            ]
            c["volumeMounts"] = [
                {"name": "suite", "mountPath": SUITE_MOUNT, "readOnly": True},
                {"name": "results", "mountPath": RESULTS},
            ]
        return c

    head_spec: dict[str, Any] = {
        "containers": [container("head", 2)],
        "volumes": [
            {"name": "suite", "configMap": {"name": f"{name}-suite"}},
            {"name": "results", "emptyDir": {}},
        ],
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-suite", "namespace": namespace, "labels": labels()},
        "data": {"suite.yaml": suite_text},
    }
    entrypoint = f"gpuscale compare --suite {SUITE_MOUNT}/suite.yaml --ray auto --out {RESULTS}/compare"
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels()},
        "spec": {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    # the driver runs here; no simulations on the head, they go to the workers
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": labels()}, "spec": head_spec},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "simulators",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {"num-cpus": str(cpus_per_worker)},
                        "template": {
                            "metadata": {"labels": labels()},
                            "spec": {"containers": [container("worker", cpus_per_worker)]},
                        },
                    }
                ],
            },
        },
    }
    return [config_map, rayjob]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the suite file) as literal blocks, the way they were written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render_rayjob_yaml(objects: list[dict[str, Any]], suite_path: Path) -> str:
    header = (
        f"# gpuscale manifests rayjob: runs the compare suite {suite_path.name} on a KubeRay cluster\n"
        "# (kubectl apply -f; needs the KubeRay operator). Results: the job's logs print the tables; the\n"
        f"# report is written to {RESULTS}/compare on the head (mount a PersistentVolumeClaim there to keep it).\n"
    )
    return header + "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=100) for o in objects)
