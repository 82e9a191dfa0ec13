"""``kind: learned``: the exported network's forward pass in numpy, through the shared tail; the
model file and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.policies.base import Aggregation, Metric, MetricsSnapshot, Reason, SignalSpec, SignalValue
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.learned import ActionSpec, LearnedConfig, Network, ObservationSpec, load_network
from gpuscale.policies.registry import load_policy, load_preset

QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 30, Aggregation.TOTAL)


def queue_network(algorithm: str = "ppo") -> Network:
    """A one-layer network on the queue (scale 100): -1 below 5 queued, +1 above 20, else 0.

    Scores for (-1, 0, +1) from x = queue / 100: (0.05 - x) x 100, 0, (x - 0.2) x 100."""
    obs = ObservationSpec((QUEUE,), (100.0,), replica_scale=10, stack=1)
    w = np.zeros((4, 3))
    w[0] = [-100.0, 0.0, 100.0]
    b = np.array([5.0, 0.0, -20.0])
    return Network(algorithm, obs, ActionSpec("delta", (-1, 0, 1)), ((w, b),), "tanh", 15.0)


def snap(t: float, current: int, queue: float | None, age_s: float = 0.0) -> MetricsSnapshot:
    value = SignalValue(queue, age_s=age_s) if queue is not None else SignalValue.missing("no samples")
    return MetricsSnapshot(time_s=t, current_replicas=current, ready=current, signals={QUEUE: value})


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "queue.npz"
    queue_network().save(path)
    return path


def test_the_network_decides_and_says_what_it_chose(model: Path) -> None:
    policy = LearnedConfig(model=str(model), min_replicas=1, max_replicas=4).build()
    assert policy.sync_period_s == 15.0  # the tick it was trained at
    state = policy.initial_state()
    d, state = policy.decide(snap(15, 2, 30.0), state)
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_UP)
    assert d.message.startswith("ppo network chose +1 (logits -1: -25.00, +0: 0.00, +1: 10.00): 2 -> 3")
    d, state = policy.decide(snap(30, 4, 30.0), state)
    assert (d.desired_replicas, d.reason) == (4, Reason.CLAMPED_TO_MAX)
    d, state = policy.decide(snap(45, 3, 1.0), state)
    assert (d.desired_replicas, d.reason) == (2, Reason.SCALE_DOWN)
    d, state = policy.decide(snap(60, 3, 10.0), state)
    assert (d.desired_replicas, d.reason) == (3, Reason.DESIRED_WITHIN_RANGE)


def test_no_data_holds_and_stale_data_holds(model: Path) -> None:
    policy = LearnedConfig(model=str(model), max_replicas=4).build()
    d, _ = policy.decide(snap(15, 2, None), policy.initial_state())
    assert d.is_hold and d.reason == Reason.NO_DATA
    d, _ = policy.decide(snap(15, 2, 30.0, age_s=46.0), policy.initial_state())
    assert d.is_hold and d.reason == Reason.STALE_DATA


def test_scale_down_stabilization_is_the_shared_stage(model: Path) -> None:
    policy = LearnedConfig(model=str(model), max_replicas=4, scale_down_stabilization_s=60).build()
    state = policy.initial_state()
    _, state = policy.decide(snap(15, 3, 10.0), state)  # wants 3
    d, state = policy.decide(snap(30, 3, 1.0), state)  # wants 2, but 3 was wanted 15 s ago
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_DOWN_STABILIZED)


def test_round_trip_and_forward_pass_match_a_hand_computation(model: Path) -> None:
    net = load_network(str(model))
    x = np.array([0.3, 0.2, 0.2, 0.0], dtype=np.float32)
    assert net.scores(x).tolist() == pytest.approx([-25.0, 0.0, 10.0])
    two_layer = Network(
        "dqn",
        net.observation,
        net.actions,
        ((np.eye(4, 2), np.array([0.0, -1.0])), (np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]), np.zeros(3))),
        "relu",
    )
    # relu([0.3, 0.2 - 1]) = [0.3, 0] -> [0.3, 0, -0.3]
    assert two_layer.scores(x).tolist() == pytest.approx([0.3, 0.0, -0.3])


def test_shipped_preset_passes_the_conformance_suite() -> None:
    policy = load_preset("ppo")
    check_policy(policy)
    assert policy.replica_bounds == (1, 10)


def _write(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _header(net: Network, **changes: object) -> np.ndarray:
    h = net.header()
    h.update(changes)
    return np.asarray(json.dumps(h))


BAD = {
    "missing": ("no such model file", None),
    "corrupt": ("not a readable .npz model file", None),
    "no-header": ("expected a JSON header", None),
    "unknown-algorithm": ("header.algorithm = 'sac': unknown algorithm; allowed: ppo, a2c, dqn", None),
    "observation-size": ("the network takes 4 inputs but its observation spec has 5", None),
    "actions": ("the network scores 3 actions but its action set has 5", None),
}


def make_bad(kind: str, path: Path) -> None:
    net = queue_network()
    ((w, b),) = net.weights
    if kind == "missing":
        return
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a model")
    elif kind == "no-header":
        _write(path, w0=w, b0=b)
    elif kind == "unknown-algorithm":
        _write(path, header=_header(net, algorithm="sac"), w0=w, b0=b)
    elif kind == "observation-size":
        obs = net.observation.to_json()
        obs["signals"].append({"metric": "gpu_util", "aggregation": "pod_mean", "window_s": 30})
        obs["scales"].append(100.0)
        _write(path, header=_header(net, observation=obs), w0=w, b0=b)
    elif kind == "actions":
        _write(path, header=_header(net, actions={"kind": "delta", "values": [-2, -1, 0, 1, 2]}), w0=w, b0=b)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_model_file_is_one_clear_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    make_bad(kind, path)
    with pytest.raises(ConfigError) as exc:
        load_network(str(path))
    assert str(path) in str(exc.value) and BAD[kind][0] in str(exc.value)
    # through a policy file: the error is located at the key
    with pytest.raises(ConfigError) as exc2:
        load_policy({"kind": "learned", "model": str(path), "max_replicas": 4}, "policy.yaml")
    assert "policy.yaml" in str(exc2.value) and "model" in str(exc2.value) and str(path) in str(exc2.value)


@pytest.mark.parametrize("kind", ["missing", "unknown-algorithm", "observation-size"])
def test_bad_model_through_the_cli_exits_2_and_writes_nothing(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    make_bad(kind, path)
    policy = tmp_path / "learned.yaml"
    policy.write_text(f"kind: learned\nmodel: {path}\nmax_replicas: 4\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", "kis-s-spike", "--policy", str(policy), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert BAD[kind][0] in result.output and str(path) in result.output
    assert not out.exists()


def test_train_refuses_an_unknown_algorithm_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(app, ["train", "--algorithm", "sac", "--out", str(out)])
    assert result.exit_code == 2
    assert "--algorithm = 'sac': unknown algorithm; allowed: ppo, a2c, dqn" in result.output
    assert not out.exists()


def test_running_the_learned_preset_imports_no_torch_and_no_gymnasium() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpuscale.experiments.catalog import builtin_scenario\n"
        "from gpuscale.experiments import compare\n"
        "from gpuscale.policies.registry import load_preset\n"
        "from gpuscale.sim.engine import simulate\n"
        "simulate(builtin_scenario('kis-s-spike'), load_preset('ppo'))\n"
        "print(sorted(m for m in ('torch', 'gymnasium', 'stable_baselines3') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
