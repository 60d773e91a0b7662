"""Environment factory: ALE games with DeepMind-style preprocessing, or plain vector-observation envs."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from a3c.config import ENV_BACKENDS
from a3c.errors import UserFacingError

FRAME_SKIP = 4
FRAME_STACK = 4
SCREEN_SIZE = 84
NOOP_MAX = 30

_registered = False


class EnvError(UserFacingError, ValueError):
    """The environment id is unknown or unsupported; the message says which and why."""


def _register() -> None:
    global _registered
    if not _registered:
        import ale_py

        gym.register_envs(ale_py)
        _registered = True


def _spec(env_id: str) -> gym.envs.registration.EnvSpec:
    _register()
    try:
        return gym.spec(env_id)
    except gym.error.Error as err:
        raise EnvError(f"unknown environment {env_id!r}: {err}") from None


def episode_return_bound(env_id: str) -> float | None:
    """The largest |return| one episode can have, where the environment fixes it: Pong ends when a side reaches
    21 points; CartPole pays 1 per step up to its step limit. None where nothing is known."""
    spec = _spec(env_id)
    if is_atari(env_id) and spec.kwargs.get("game") == "pong":
        return 21.0
    if spec.id.startswith("CartPole") and spec.max_episode_steps:
        return float(spec.max_episode_steps)
    return None


def is_atari(env_id: str) -> bool:
    entry = _spec(env_id).entry_point
    return isinstance(entry, str) and entry.startswith("ale_py")


@dataclass(frozen=True)
class EnvInfo:
    """What the learner tells actors about an environment."""

    model_kind: str
    obs_shape: tuple[int, ...]
    num_actions: int
    frames_per_step: int
    clip_rewards: bool


def make_env(env_id: str, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """One environment ready for the network: (4, 84, 84) uint8 frames for ALE games, float32 vectors else.

    `render_mode` ("rgb_array", "human") is passed to the game for recording or watching it.
    """
    if is_atari(env_id):
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        # The wrapper does the frame skip (max-pooling the last two frames), so the emulator must not.
        env = gym.make(env_id, frameskip=1, render_mode=render_mode)
        env = AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE,
                                 terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
        env = FrameStackObservation(env, FRAME_STACK)
    else:
        env = gym.make(env_id, render_mode=render_mode)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise EnvError(f"{env_id} has action space {env.action_space}; only discrete actions are supported")
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def render_problem(env_id: str) -> str | None:
    """Why `env_id` cannot render RGB frames here (None: it can); CartPole's renderer needs pygame, say."""
    try:
        env = make_env(env_id, render_mode="rgb_array")
    except gym.error.DependencyNotInstalled as err:
        return str(err)
    try:
        env.reset(seed=0)
        env.render()
    except gym.error.DependencyNotInstalled as err:
        return str(err)
    finally:
        env.close()
    return None


def describe_env(env_id: str) -> EnvInfo:
    """Build the environment once to read its spaces."""
    atari = is_atari(env_id)
    env = make_env(env_id)
    try:
        shape = tuple(int(d) for d in env.observation_space.shape)
        if not atari and len(shape) != 1:
            raise EnvError(f"{env_id} has observations of shape {shape}; expected an ALE game or a flat vector")
        return EnvInfo(model_kind="cnn" if atari else "mlp", obs_shape=shape,
                       num_actions=int(env.action_space.n),
                       frames_per_step=FRAME_SKIP if atari else 1, clip_rewards=atari)
    finally:
        env.close()


def observation_array(obs: np.ndarray) -> np.ndarray:
    """Observations as the network takes them: uint8 frames stay uint8, vectors become float32."""
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32, copy=False)


@dataclass
class BatchStep:
    """One step of N environments. An environment whose episode ended has already started the next one."""

    obs: np.ndarray                       # [N, *obs_shape] the observations to act on next
    rewards: np.ndarray                   # [N] float32, unclipped
    terminated: np.ndarray                # [N] bool
    truncated: np.ndarray                 # [N] bool
    truncated_obs: dict[int, np.ndarray]  # env index -> last observation of an episode a time limit cut


class GymnasiumBatch:
    """N gymnasium environments (the wrappers of make_env) stepped one after another in Python."""

    def __init__(self, env_id: str, num_envs: int, seed: int) -> None:
        self.seed = seed
        self.envs = [make_env(env_id, seed=seed + i) for i in range(num_envs)]

    def reset(self) -> np.ndarray:
        return np.stack([observation_array(env.reset(seed=self.seed + i)[0]) for i, env in enumerate(self.envs)])

    def step(self, actions: np.ndarray) -> BatchStep:
        n = len(self.envs)
        rewards, terminated, truncated = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
        observations, cut = [], {}
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], _ = env.step(int(actions[i]))
            if terminated[i] or truncated[i]:
                if not terminated[i]:
                    cut[i] = observation_array(obs)
                obs, _ = env.reset()
            observations.append(observation_array(obs))
        return BatchStep(np.stack(observations), rewards, terminated, truncated, cut)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class AleVectorBatch:
    """N ALE games in ale-py's C++ vector environment: the same preprocessing as make_env (frame skip 4 with
    max-pooling, 84x84 gray, 4-frame stack, up to 30 no-op starts) without Python in the per-frame loop."""

    def __init__(self, env_id: str, num_envs: int, seed: int, max_frames: int | None = None) -> None:
        from ale_py.vector_env import AtariVectorEnv

        kwargs = _spec(env_id).kwargs
        self.seed = seed
        self.env = AtariVectorEnv(
            kwargs["game"], num_envs, num_threads=1, repeat_action_probability=kwargs["repeat_action_probability"],
            full_action_space=kwargs["full_action_space"],
            max_num_frames_per_episode=max_frames or kwargs["max_num_frames_per_episode"],
            img_height=SCREEN_SIZE, img_width=SCREEN_SIZE, grayscale=True,
            stack_num=FRAME_STACK, frameskip=FRAME_SKIP, maxpool=True, noop_max=NOOP_MAX, episodic_life=False,
            reward_clipping=False, use_fire_reset=False)

    def reset(self) -> np.ndarray:
        return self.env.reset(seed=self.seed)[0]

    def step(self, actions: np.ndarray) -> BatchStep:
        obs, rewards, terminated, truncated, _ = self.env.step(actions.astype(np.int64, copy=False))
        ended = terminated | truncated
        cut = {}
        if ended.any():
            cut = {int(i): obs[i].copy() for i in np.flatnonzero(truncated & ~terminated)}
            restarted, _ = self.env.reset(options={"reset_mask": ended})
            obs = np.where(ended[:, None, None, None], restarted, obs)
        return BatchStep(obs, rewards.astype(np.float32), terminated, truncated, cut)

    def close(self) -> None:
        self.env.close()


def make_env_batch(env_id: str, num_envs: int, seed: int, backend: str = "auto") -> GymnasiumBatch | AleVectorBatch:
    """`num_envs` environments seeded seed, seed + 1, ...; "auto" takes ale-vector for ALE games."""
    if backend not in ENV_BACKENDS:
        raise EnvError(f"unknown environment backend {backend!r} (choose from {', '.join(ENV_BACKENDS)})")
    atari = is_atari(env_id)
    if backend == "ale-vector" and not atari:
        raise EnvError(f"the ale-vector backend runs ALE games only, not {env_id}")
    if atari and backend != "gymnasium" and _spec(env_id).kwargs.get("obs_type", "rgb") == "rgb":
        return AleVectorBatch(env_id, num_envs, seed)
    return GymnasiumBatch(env_id, num_envs, seed)
