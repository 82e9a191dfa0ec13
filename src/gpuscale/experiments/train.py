"""``gpuscale train``: a Stable-Baselines3 agent trained in the simulator, exported for ``kind: learned``.

The agent (PPO by default; A2C and DQN selectable) trains on :class:`gpuscale.rl.ScalingEnv` over a
training suite (scenarios x seeds). Every ``eval_every`` steps the *exported* network -- the numpy
forward pass ``kind: learned`` runs, not the torch one -- is run through the ordinary simulator on
the held-out scenarios and seeds, and its SLO attainment and GPU-hours are reported; a checkpoint is
written then. The result is one model file (:mod:`gpuscale.policies.learned`).

Same inputs and seed, same weights: torch runs on one thread with deterministic algorithms, the
environment is seeded from the seed, and a single environment runs in process.

The held-out evaluations can run elsewhere (``gpuscale train --ray ADDRESS``): each (scenario, seed)
of an evaluation is one task of a :class:`~gpuscale.experiments.runner.TaskPool`, carrying the
exported network and the resolved scenario as data, and the figures are summed in the runs' order,
so they are the same numbers as in process. Training itself stays in this process: spreading its
rollouts over several environments would change the trajectory the agent learns from, so the
weights would no longer be the ones a local run with the same seed gives.

Torch and SB3 are imported only when a run starts (``gpuscale compare`` never needs them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpuscale._core.errors import ConfigError
from gpuscale.config.scenario import Scenario
from gpuscale.experiments.runner import TaskPool
from gpuscale.policies.learned import ALGORITHMS, LearnedConfig, LearnedPolicy, Network
from gpuscale.rl.env import EnvConfig, ScalingEnv
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import Summary

DEFAULT_HYPER: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 1024, "batch_size": 64, "gamma": 0.9, "learning_rate": 1e-3, "ent_coef": 0.01},
    "a2c": {"gamma": 0.9},
    "dqn": {"gamma": 0.9, "learning_starts": 1000, "exploration_fraction": 0.3},
}
"""gpuscale's choices over SB3's defaults: a 0.9 discount (a 30-s tick's consequences play out within
minutes: pods are Ready in seconds, so ten ticks of horizon are plenty), PPO's 1,024-step rollouts
(about 25 episodes of the KIS-S patterns) and a little entropy to keep exploring scale-downs."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    algorithm: str = "ppo"
    timesteps: int = 20_000
    seed: int = 0
    net_arch: tuple[int, ...] = (64, 64)
    eval_scenarios: tuple[str, ...] = ()
    """Held-out scenarios (default: the training scenarios)."""
    eval_seeds: tuple[int, ...] = (101,)
    """Held-out seeds (not among the training seeds)."""
    eval_every: int = 0
    """Evaluate (and checkpoint) every this many steps; 0: only at the end."""
    checkpoint_dir: Path | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the SB3 algorithm (``n_steps``, ``learning_rate``, ...)."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                "--algorithm", None, self.algorithm, f"unknown algorithm; allowed: {', '.join(ALGORITHMS)}"
            )
        if self.timesteps < 1:
            raise ConfigError("--timesteps", None, self.timesteps, "expected an integer >= 1")


@dataclass(frozen=True)
class Evaluation:
    """The exported network on the held-out runs, as the simulator reports them."""

    timesteps: int
    slo_attainment: float
    """Mean over the runs of the share of requests within the SLO."""
    runs_meeting_slo: int
    runs: int
    gpu_hours: float
    """Total over the runs."""
    cost_usd: float


@dataclass(frozen=True)
class Progress:
    timesteps: int
    total: int
    evaluation: Evaluation | None = None


@dataclass(frozen=True)
class TrainResult:
    network: Network
    evaluations: tuple[Evaluation, ...]
    seconds: float
    model: Any = None
    """The SB3 model (torch), for a caller that wants to keep training or compare."""


def _deterministic_torch(seed: int) -> Any:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    return torch


def _algorithm_class(name: str) -> Any:
    from stable_baselines3 import A2C, DQN, PPO

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN}[name]


def _linear_layers(module: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    return [
        (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    ]


def export(model: Any, config: TrainConfig, trained: dict[str, Any] | None = None) -> Network:
    """The numpy network of an SB3 model: the policy head for PPO/A2C, the Q network for DQN."""
    if config.algorithm == "dqn":
        layers = _linear_layers(model.q_net.q_net)
        activation = "relu"
    else:
        layers = _linear_layers(model.policy.mlp_extractor.policy_net) + _linear_layers(
            model.policy.action_net
        )
        activation = "tanh"
    env = config.env
    return Network(
        algorithm=config.algorithm,
        observation=env.observation,
        actions=env.actions,
        weights=tuple(layers),
        activation=activation,
        tick_s=env.tick_s,
        trained=trained,
    )


def learned_policy(network: Network, env: EnvConfig, folder: Path) -> LearnedPolicy:
    """``kind: learned`` on ``network``, through its model file (the path every deployment takes)."""
    path = folder / "model.npz"
    network.save(path)
    config = LearnedConfig(model=str(path), min_replicas=env.min_replicas, max_replicas=env.max_replicas)
    return config.build()


@dataclass(frozen=True)
class EvalRun:
    """One held-out simulation, as data: it runs wherever a task pool sends it."""

    network: Network
    env: EnvConfig
    scenario: Scenario
    seed: int


def run_eval(run: EvalRun) -> Summary:
    """The exported network as ``kind: learned`` (through its model file) on one scenario and seed."""
    with tempfile.TemporaryDirectory() as tmp:
        policy = learned_policy(run.network, run.env, Path(tmp))
        return simulate(run.scenario, policy, seed=run.seed).summary


def evaluate(
    network: Network,
    env: EnvConfig,
    scenarios: Sequence[str],
    seeds: Sequence[int],
    *,
    slo_target: float | None = None,
    timesteps: int = 0,
    pool: TaskPool | None = None,
) -> Evaluation:
    """Run the exported network as ``kind: learned`` in the simulator on every scenario x seed, here
    or on ``pool`` (the same figures either way: they are summed in the runs' order)."""
    target = env.reward.slo_target if slo_target is None else slo_target
    prep = ScalingEnv(replace(env, scenarios=tuple(scenarios)))
    runs = [EvalRun(network, env, scenario, seed) for scenario in prep._scenarios for seed in seeds]
    summaries: dict[int, Summary] = {}
    if pool is None:
        summaries.update(enumerate(map(run_eval, runs)))
    else:
        summaries.update(pool.imap_unordered(run_eval, runs))
    attain: list[float] = []
    gpu_h = cost = 0.0
    for i in range(len(runs)):
        s = summaries[i]
        attain.append(s.slo_attainment)
        gpu_h += s.gpu_hours
        cost += s.cost_usd
    met = sum(1 for a in attain if a >= target - 1e-12)
    return Evaluation(timesteps, float(np.mean(attain)), met, len(attain), gpu_h, cost)


def train(
    config: TrainConfig,
    progress: Callable[[Progress], None] | None = None,
    pool: TaskPool | None = None,
) -> TrainResult:
    """Train, evaluating and checkpointing as configured; the exported network. The held-out
    evaluations run on ``pool`` when one is given (a Ray cluster), with the same figures."""
    import time as _time

    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    torch = _deterministic_torch(config.seed)
    start = _time.perf_counter()  # wall time of the run, for the report only
    env = ScalingEnv(config.env)
    algo = _algorithm_class(config.algorithm)
    kwargs: dict[str, Any] = {"seed": config.seed, "device": "cpu", "verbose": 0}
    if config.algorithm == "dqn":
        kwargs["policy_kwargs"] = {"net_arch": list(config.net_arch)}
    else:
        kwargs["policy_kwargs"] = {
            "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
            "activation_fn": torch.nn.Tanh,
        }
    kwargs.update(DEFAULT_HYPER[config.algorithm])
    kwargs.update(config.hyper)
    model = algo("MlpPolicy", env, **kwargs)
    # SB3's default logger makes a folder under the system's temporary directory for every run
    # (SB3-<date>), even with no output: a write outside --out. One with no outputs writes nothing.
    model.set_logger(Logger(folder=None, output_formats=[]))
    eval_scenarios = config.eval_scenarios or config.env.scenarios
    evaluations: list[Evaluation] = []
    meta = {
        "algorithm": config.algorithm,
        "timesteps": config.timesteps,
        "seed": config.seed,
        "scenarios": list(config.env.scenarios),
        "seeds": list(config.env.seeds),
        "net_arch": list(config.net_arch),
        "reward": config.env.reward.kind,
        "hyper": {**DEFAULT_HYPER[config.algorithm], **config.hyper},
    }

    def checkpoint(steps: int) -> None:
        network = export(model, config, {**meta, "timesteps_done": steps})
        ev = evaluate(network, config.env, eval_scenarios, config.eval_seeds, timesteps=steps, pool=pool)
        evaluations.append(ev)
        if config.checkpoint_dir is not None:
            config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            network.save(config.checkpoint_dir / f"{config.algorithm}-{steps}.npz")
        if progress is not None:
            progress(Progress(steps, config.timesteps, ev))

    class _Callback(BaseCallback):
        def _on_step(self) -> bool:
            n = self.num_timesteps
            if progress is not None and n % 256 == 0:
                progress(Progress(n, config.timesteps))
            if config.eval_every and n % config.eval_every == 0 and n < config.timesteps:
                checkpoint(n)
            return True

    model.learn(total_timesteps=config.timesteps, callback=_Callback())
    checkpoint(config.timesteps)
    network = export(model, config, {**meta, "timesteps_done": config.timesteps})
    return TrainResult(network, tuple(evaluations), _time.perf_counter() - start, model)


def scores_agree(model: Any, network: Network, observations: np.ndarray) -> bool:
    """Whether the numpy forward pass picks the SB3 model's deterministic action on every row."""
    actions, _ = model.predict(observations, deterministic=True)
    mine = [network.act(o)[0] for o in observations]
    return bool(np.array_equal(np.asarray(actions).reshape(-1), np.asarray(mine)))


def parse_csv(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_ints(text: str | None, option: str) -> tuple[int, ...]:
    out: list[int] = []
    for p in parse_csv(text):
        try:
            out.append(int(p))
        except ValueError:
            raise ConfigError(option, None, p, "expected comma-separated integers") from None
    return tuple(out)
