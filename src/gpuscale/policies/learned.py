"""``kind: learned``: a network trained in gpuscale's simulator, run in numpy inside ``decide``.

A model file is one ``.npz`` (``numpy.savez``, no pickle): a JSON ``header`` and the network's
weights ``w0, b0, w1, b1, ...`` (a multilayer perceptron; the last layer gives one score per action).
The header says everything the network needs to see and do::

    {"format": "gpuscale-learned/1", "algorithm": "ppo",
     "observation": {"signals": [{"metric": "gpu_util", "aggregation": "pod_mean", "window_s": 30}, ...],
                     "scales": [100, ...], "replica_scale": 10, "stack": 2, "clip": 10},
     "actions": {"kind": "delta", "values": [-2, -1, 0, 1, 2]},
     "activation": "tanh", "tick_s": 30, "trained": {...how it was made...}}

**The observation** (:class:`ObservationSpec`) is the same vector in the simulator, where
``gpuscale.rl`` trains on it, and live, where a Prometheus snapshot feeds it: one *frame* per tick is
each declared signal divided by its scale (a missing or stale signal is 0), then the spec, Ready
pods and pods on their way (starting + pending) divided by ``replica_scale``, every entry clipped to
``[0, clip]``; the last ``stack`` frames, oldest first, make the vector (before the first ticks the
oldest frame is repeated). Example: GPU util 60 % (scale 100), a queue of 12 in total (scale 100),
4 replicas asked, 3 Ready, 1 starting, replica scale 10 -> ``[0.6, 0.12, 0.4, 0.3, 0.1]``.

**The action** is the network's highest score (deterministic; a policy's decide draws nothing):
``delta`` adds its value to the current spec (KIS-S's -2..+2), ``target`` asks for
``min + index`` replicas. The shared tail follows: missing data holds, bounds clamp, and an optional
scale-down stabilization window smooths the network's mind changes.

Torch is not needed here: training (``gpuscale train``) exports the weights to this format.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr, model_validator

from gpuscale._core.errors import ConfigError
from gpuscale.policies._config import default_max_age_s, field_error
from gpuscale.policies.base import Aggregation, Metric, MetricsSnapshot, SignalSpec
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    Stabilization,
    TailedPolicy,
    direction_reason,
)

FORMAT = "gpuscale-learned/1"
ALGORITHMS = ("ppo", "a2c", "dqn")
"""Algorithms whose networks this module runs (their exported policy / Q network)."""
ACTIVATIONS = ("tanh", "relu")
BUILTIN_PREFIX = "builtin:"
"""``model: builtin:NAME`` is the model file shipped in the package (``gpuscale/policies/models``)."""

DEFAULT_SCALES: Mapping[Metric, float] = {
    Metric.GPU_UTIL: 100.0,
    Metric.GPU_MEMORY_UTIL: 100.0,
    Metric.CPU_UTIL: 100.0,
    Metric.GPU_MEMORY_USED_GB: 80.0,
    Metric.CONCURRENCY: 10.0,
    Metric.QUEUE_LENGTH: 10.0,
    Metric.REQUEST_RATE: 100.0,
    Metric.LATENCY_P50_MS: 1000.0,
    Metric.LATENCY_P95_MS: 1000.0,
    Metric.LATENCY_P99_MS: 1000.0,
}
"""A signal's default scale: per pod; a ``total`` is also divided by the replica scale."""

Frame = tuple[float, ...]


def default_scale(spec: SignalSpec, replica_scale: float) -> float:
    base = DEFAULT_SCALES[spec.metric]
    if spec.aggregation is Aggregation.TOTAL and spec.metric not in (
        Metric.LATENCY_P50_MS,
        Metric.LATENCY_P95_MS,
        Metric.LATENCY_P99_MS,
    ):
        return base * replica_scale
    return base


@dataclass(frozen=True)
class ObservationSpec:
    """How a snapshot becomes the network's input (see the module docstring)."""

    signals: tuple[SignalSpec, ...]
    scales: tuple[float, ...]
    replica_scale: float
    stack: int = 1
    clip: float = 10.0

    COUNTS: ClassVar[tuple[str, ...]] = ("current_replicas", "ready", "starting+pending")

    def __post_init__(self) -> None:
        if len(self.scales) != len(self.signals):
            raise ValueError(f"{len(self.scales)} scales for {len(self.signals)} signals")
        if any(not (s > 0 and math.isfinite(s)) for s in (*self.scales, self.replica_scale, self.clip)):
            raise ValueError("scales, replica_scale and clip must be finite numbers > 0")
        if self.stack < 1:
            raise ValueError("stack must be >= 1")

    @staticmethod
    def default(signals: Sequence[SignalSpec], replica_scale: float, stack: int = 1) -> ObservationSpec:
        return ObservationSpec(
            tuple(signals), tuple(default_scale(s, replica_scale) for s in signals), replica_scale, stack
        )

    @property
    def frame_size(self) -> int:
        return len(self.signals) + len(self.COUNTS)

    @property
    def size(self) -> int:
        return self.frame_size * self.stack

    def frame(self, snapshot: MetricsSnapshot, usable: Mapping[SignalSpec, float]) -> Frame:
        """One tick's frame: ``usable`` are the signals fresh enough to read (the others count 0)."""
        raw = [usable.get(spec, 0.0) / scale for spec, scale in zip(self.signals, self.scales, strict=True)]
        r = self.replica_scale
        raw += [snapshot.current_replicas / r, snapshot.ready / r, (snapshot.starting + snapshot.pending) / r]
        return tuple(min(max(v, 0.0), self.clip) for v in raw)

    def push(self, history: tuple[Frame, ...], frame: Frame) -> tuple[Frame, ...]:
        """The last ``stack`` frames after ``frame``; a short history repeats its oldest frame."""
        frames = (*history, frame)[-self.stack :]
        return (frames[0],) * (self.stack - len(frames)) + frames

    def vector(self, history: tuple[Frame, ...]) -> np.ndarray:
        return np.asarray([v for f in history for v in f], dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": [
                {"metric": s.metric.value, "aggregation": s.aggregation.value, "window_s": s.window_s}
                for s in self.signals
            ],
            "scales": list(self.scales),
            "replica_scale": self.replica_scale,
            "stack": self.stack,
            "clip": self.clip,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ObservationSpec:
        signals = tuple(
            SignalSpec(Metric(s["metric"]), float(s["window_s"]), Aggregation(s["aggregation"]))
            for s in data["signals"]
        )
        return ObservationSpec(
            signals,
            tuple(float(v) for v in data["scales"]),
            float(data["replica_scale"]),
            int(data.get("stack", 1)),
            float(data.get("clip", 10.0)),
        )


def observe(
    spec: ObservationSpec, snapshot: MetricsSnapshot, max_age_s: float, history: tuple[Frame, ...]
) -> tuple[np.ndarray, tuple[Frame, ...]]:
    """The observation at ``snapshot`` and the frame history after it: the one function the policy
    (live and simulated) and the training environment both call."""
    usable: dict[SignalSpec, float] = {}
    for s in spec.signals:
        got = snapshot.get(s)
        if got.value is not None and got.age_s <= max_age_s:
            usable[s] = got.value
    frames = spec.push(history, spec.frame(snapshot, usable))
    return spec.vector(frames), frames


@dataclass(frozen=True)
class ActionSpec:
    """``delta``: add ``values[i]`` to the current spec; ``target``: ask for ``low + i`` replicas."""

    kind: Literal["delta", "target"]
    values: tuple[int, ...] = (-2, -1, 0, 1, 2)
    low: int = 1
    high: int = 10

    @property
    def n(self) -> int:
        return len(self.values) if self.kind == "delta" else self.high - self.low + 1

    def replicas(self, index: int, current: int) -> int:
        if self.kind == "delta":
            return max(current + self.values[index], 0)
        return self.low + index

    def describe(self, index: int) -> str:
        if self.kind == "delta":
            return f"{self.values[index]:+d}"
        return f"target {self.low + index}"

    def to_json(self) -> dict[str, Any]:
        if self.kind == "delta":
            return {"kind": "delta", "values": list(self.values)}
        return {"kind": "target", "low": self.low, "high": self.high}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ActionSpec:
        if data["kind"] == "delta":
            return ActionSpec("delta", tuple(int(v) for v in data["values"]))
        if data["kind"] == "target":
            return ActionSpec("target", low=int(data["low"]), high=int(data["high"]))
        raise ValueError(f"actions.kind {data['kind']!r}; allowed: delta, target")


@dataclass(frozen=True, eq=False)
class Network:
    """A multilayer perceptron's weights and what it observes and does (one model file).

    Two networks are equal when everything about them is, the weights compared element by element
    (numpy arrays have no truth value of their own)."""

    algorithm: str
    observation: ObservationSpec
    actions: ActionSpec
    weights: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str = "tanh"
    tick_s: float = 30.0
    trained: Mapping[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Network):
            return NotImplemented
        same_weights = len(self.weights) == len(other.weights) and all(
            np.array_equal(w, ow) and np.array_equal(b, ob)
            for (w, b), (ow, ob) in zip(self.weights, other.weights, strict=True)
        )
        rest = (self.algorithm, self.observation, self.actions, self.activation, self.tick_s, self.trained)
        return same_weights and rest == (
            other.algorithm,
            other.observation,
            other.actions,
            other.activation,
            other.tick_s,
            other.trained,
        )

    def __hash__(self) -> int:
        return hash((self.algorithm, self.observation, self.actions, self.activation, self.tick_s))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The forward pass: hidden layers with the activation, a linear last layer."""
        h = x.astype(np.float64)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < last:
                h = np.tanh(h) if self.activation == "tanh" else np.maximum(h, 0.0)
        return h

    def act(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        s = self.scores(x)
        return int(np.argmax(s)), s

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "algorithm": self.algorithm,
            "observation": self.observation.to_json(),
            "actions": self.actions.to_json(),
            "activation": self.activation,
            "tick_s": self.tick_s,
            "layers": [list(w.shape) for w, _ in self.weights],
            "trained": dict(self.trained or {}),
        }

    def save(self, path: str | Path) -> None:
        """Write the model file (``numpy.savez``; the header as a JSON string)."""
        arrays: dict[str, np.ndarray] = {"header": np.asarray(json.dumps(self.header(), sort_keys=True))}
        for i, (w, b) in enumerate(self.weights):
            arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
            arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]


def models_dir() -> Path:
    return Path(str(resources.files("gpuscale.policies").joinpath("models")))


def resolve_model(ref: str) -> Path:
    """``builtin:NAME`` -> the shipped ``NAME.npz``; anything else is a path."""
    if ref.startswith(BUILTIN_PREFIX):
        return models_dir() / f"{ref[len(BUILTIN_PREFIX) :]}.npz"
    return Path(ref)


def load_network(ref: str, source: str = "model") -> Network:
    """Read and check a model file; every problem is a :class:`ConfigError` naming the file and what
    was expected."""
    path = resolve_model(ref)
    where = f"{source} ({path})" if ref.startswith(BUILTIN_PREFIX) else str(path)

    def bad(key: str | None, value: object, allowed: str) -> ConfigError:
        return ConfigError(where, key, value, allowed)

    if not path.is_file():
        shipped = sorted(p.stem for p in models_dir().glob("*.npz"))
        raise bad(
            None,
            ref,
            f"no such model file; expected an .npz written by gpuscale train (shipped: "
            f"{', '.join(BUILTIN_PREFIX + s for s in shipped) or 'none'})",
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise bad(
            None,
            ref,
            f"not a readable .npz model file ({exc.__class__.__name__}); expected "
            "the file gpuscale train exports",
        ) from None
    if "header" not in arrays:
        raise bad("header", "<missing>", f"expected a JSON header ({FORMAT})")
    try:
        header = json.loads(str(arrays["header"]))
    except json.JSONDecodeError:
        raise bad("header", "<not JSON>", f"expected a JSON header ({FORMAT})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise bad(
            "header.format",
            header.get("format") if isinstance(header, dict) else header,
            f"expected {FORMAT!r}",
        )
    algorithm = header.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise bad("header.algorithm", algorithm, f"unknown algorithm; allowed: {', '.join(ALGORITHMS)}")
    activation = header.get("activation", "tanh")
    if activation not in ACTIVATIONS:
        raise bad("header.activation", activation, f"allowed: {', '.join(ACTIVATIONS)}")
    try:
        obs = ObservationSpec.from_json(header["observation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(
            "header.observation",
            header.get("observation"),
            f"expected signals, scales and replica_scale ({exc})",
        ) from None
    try:
        actions = ActionSpec.from_json(header["actions"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(
            "header.actions", header.get("actions"), f"expected a delta or target action set ({exc})"
        ) from None
    weights: list[tuple[np.ndarray, np.ndarray]] = []
    while f"w{len(weights)}" in arrays:
        i = len(weights)
        w, b = arrays[f"w{i}"], arrays.get(f"b{i}")
        if (
            w.ndim != 2
            or b is None
            or b.shape != (w.shape[1],)
            or not np.all(np.isfinite(w))
            or not np.all(np.isfinite(b))
        ):
            raise bad(f"w{i}", list(w.shape), "expected a finite 2-D weight matrix and a matching bias")
        weights.append((w.astype(np.float64), b.astype(np.float64)))
    if not weights:
        raise bad("w0", "<missing>", "expected the network's weights w0, b0, w1, b1, ...")
    size_in = weights[0][0].shape[0]
    if size_in != obs.size:
        raise bad(
            "w0",
            size_in,
            f"the network takes {size_in} inputs but its observation spec has "
            f"{obs.size} ({len(obs.signals)} signals + 3 counts, x {obs.stack} stacked)",
        )
    for i in range(1, len(weights)):
        if weights[i][0].shape[0] != weights[i - 1][0].shape[1]:
            raise bad(f"w{i}", list(weights[i][0].shape), f"expected {weights[i - 1][0].shape[1]} inputs")
    size_out = weights[-1][0].shape[1]
    if size_out != actions.n:
        raise bad(
            f"w{len(weights) - 1}",
            size_out,
            f"the network scores {size_out} actions but its action set has {actions.n}",
        )
    tick = header.get("tick_s", 30.0)
    if not isinstance(tick, (int, float)) or not tick > 0:
        raise bad("header.tick_s", tick, "expected a number > 0 (seconds)")
    return Network(algorithm, obs, actions, tuple(weights), activation, float(tick), header.get("trained"))


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnedState:
    """The last ``stack`` observation frames and the tail's state."""

    frames: tuple[Frame, ...]
    tail: PipelineState


@dataclass(frozen=True)
class LearnedPolicy(TailedPolicy[LearnedState]):
    """The network's choice through the shared tail (see the module docstring)."""

    config: LearnedConfig
    network: Network

    @property
    def name(self) -> str:
        return self.config.name or "learned"

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return self.network.observation.signals

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {s: f"model header.observation.signals[{i}]" for i, s in enumerate(self.signals)}

    @property
    def sync_period_s(self) -> float:
        return self.config.sync_period_s or self.network.tick_s

    @property
    def max_signal_age_s(self) -> float:
        return default_max_age_s(self.config.max_signal_age_s, self.sync_period_s)

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.config.min_replicas, self.config.max_replicas)

    @property
    def initial_replicas(self) -> int | None:
        return None

    @cached_property
    def tail(self) -> Pipeline:
        cfg = self.config
        stages: list[Any] = []
        if cfg.scale_down_stabilization_s > 0:
            stages.append(Stabilization(0.0, cfg.scale_down_stabilization_s))
        stages.append(Bounds(cfg.min_replicas, cfg.max_replicas))
        return Pipeline(tuple(stages))

    def initial_state(self) -> LearnedState:
        return LearnedState((), self.tail.initial_state())

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: LearnedState
    ) -> tuple[None, LearnedState]:
        """Every tick's frame joins the history, holds included, as in training."""
        _, frames = observe(self.network.observation, snapshot, self.max_signal_age_s, state.frames)
        return None, LearnedState(frames, state.tail)

    def choose(self, observation: np.ndarray) -> tuple[int, str]:
        """The action index and how it was chosen."""
        index, scores = self.network.act(observation)
        what = "Q-values" if self.network.algorithm == "dqn" else "logits"
        shown = ", ".join(
            f"{self.network.actions.describe(i)}: {v:.2f}" for i, v in enumerate(scores.tolist())
        )
        return (
            index,
            f"{self.network.algorithm} network chose {self.network.actions.describe(index)} ({what} {shown})",
        )

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: LearnedState
    ) -> tuple[Recommendation, LearnedState]:
        obs = self.network.observation.vector(state.frames)
        index, note = self.choose(obs)
        current = snapshot.current_replicas
        wanted = self.network.actions.replicas(index, current)
        return Recommendation(
            wanted, direction_reason(wanted, current), f"{note}: {current} -> {wanted}"
        ), state


@register_kind
class LearnedConfig(KindConfig):
    """A network trained with gpuscale train, run in numpy (no torch at run time)."""

    kind: Literal["learned"] = "learned"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    model: str = Field(
        description="The model file gpuscale train exported (.npz), or builtin:NAME for one shipped "
        "with gpuscale (builtin:ppo). A relative path is relative to the working directory."
    )
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (default 1).")
    max_replicas: int = Field(ge=1, description="Most replicas; required (GPUs are a budget decision).")
    scale_down_stabilization_s: float = Field(
        default=0.0,
        ge=0,
        description="Scale down only to the highest choice of this many seconds (HPA-style window); "
        "default 0, the network's choice as trained.",
    )
    sync_period_s: float | None = Field(
        default=None, gt=0, description="Control tick, seconds; default the tick the model was trained at."
    )
    max_signal_age_s: float | None = Field(
        default=None,
        gt=0,
        description="A signal older than this is stale: it counts 0 in the observation, and "
        "with every signal stale the policy holds. Default 3 ticks.",
    )
    _network: Network | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _checks(self) -> LearnedConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        try:
            self._network = load_network(self.model)
        except ConfigError as exc:
            field_error(("model",), self.model, exc.render())
        return self

    @property
    def network(self) -> Network:
        if self._network is None:  # pragma: no cover - set by the validator
            self._network = load_network(self.model)
        return self._network

    @classmethod
    def example(cls) -> LearnedConfig:
        return cls(model="builtin:ppo", max_replicas=10)

    def build(self) -> LearnedPolicy:
        return LearnedPolicy(self, self.network)
