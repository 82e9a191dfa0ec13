"""Reinforcement learning over gpuscale's simulator: the Gymnasium environment
(:class:`ScalingEnv`); the observation encoding it shares with ``kind: learned`` lives in
:mod:`gpuscale.policies.learned`. Importing this package needs gymnasium; training needs
stable-baselines3 and torch (:mod:`gpuscale.experiments.train`)."""

from gpuscale.rl.env import EnvConfig, RewardSpec, ScalingEnv, default_signals, make_env, rollout

__all__ = ["EnvConfig", "RewardSpec", "ScalingEnv", "default_signals", "make_env", "rollout"]
