"""Several environments stepped together, one batched forward pass per step, `t_max` steps per rollout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from a3c.envs import make_env, observation_array
from a3c.model import ActorCritic


@dataclass
class Rollout:
    """T steps of N environments. obs has T + 1 rows: the last is the state to bootstrap from."""

    obs: np.ndarray                     # [T + 1, N, *obs_shape]
    actions: np.ndarray                 # [T, N] int64
    rewards: np.ndarray                 # [T, N] float32, as the environment gave them
    dones: np.ndarray                   # [T, N] float32, 1.0 where the step ended an episode
    truncated: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (t, env, final obs)
    episode_returns: list[float] = field(default_factory=list)                  # episodes finished

    @property
    def agent_steps(self) -> int:
        return int(self.actions.size)


class VectorRollout:
    def __init__(self, env_id: str, num_envs: int, t_max: int, seed: int) -> None:
        self.envs = [make_env(env_id, seed=seed + i) for i in range(num_envs)]
        self.t_max = t_max
        first = [observation_array(env.reset(seed=seed + i)[0]) for i, env in enumerate(self.envs)]
        self.obs = np.stack(first)
        self.running_returns = np.zeros(num_envs, dtype=np.float64)

    def collect(self, model: ActorCritic) -> Rollout:
        t_max, n = self.t_max, len(self.envs)
        obs = np.empty((t_max + 1,) + self.obs.shape, dtype=self.obs.dtype)
        actions = np.empty((t_max, n), dtype=np.int64)
        rewards = np.empty((t_max, n), dtype=np.float32)
        dones = np.zeros((t_max, n), dtype=np.float32)
        rollout = Rollout(obs, actions, rewards, dones)
        for t in range(t_max):
            obs[t] = self.obs
            with torch.no_grad():
                logits, _ = model(torch.from_numpy(self.obs))
            actions[t] = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1).numpy()
            for i, env in enumerate(self.envs):
                next_obs, reward, terminated, truncated, _ = env.step(int(actions[t, i]))
                rewards[t, i] = reward
                self.running_returns[i] += reward
                if terminated or truncated:
                    dones[t, i] = 1.0
                    rollout.episode_returns.append(float(self.running_returns[i]))
                    self.running_returns[i] = 0.0
                    if truncated and not terminated:
                        rollout.truncated.append((t, i, observation_array(next_obs)))
                    next_obs, _ = env.reset()
                self.obs[i] = observation_array(next_obs)
        obs[t_max] = self.obs
        return rollout

    def close(self) -> None:
        for env in self.envs:
            env.close()
