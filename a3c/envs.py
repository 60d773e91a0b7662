"""Environment factory: ALE games with DeepMind-style preprocessing, or plain vector-observation envs."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

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
