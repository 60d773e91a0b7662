"""Several environments stepped together, one batched forward pass per step, `t_max` steps per rollout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from a3c.envs import make_env_batch
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
    # The convolutions' output for each step, autograd graph attached: the gradient runs only the dense layers
    # again, once over all T x N steps (see `collect`).
    features: list[torch.Tensor] = field(default_factory=list)                  # T x [N, F]

    @property
    def agent_steps(self) -> int:
        return int(self.actions.size)


class VectorRollout:
    def __init__(self, env_id: str, num_envs: int, t_max: int, seed: int, backend: str = "auto") -> None:
        self.envs = make_env_batch(env_id, num_envs, seed, backend)
        self.t_max = t_max
        self.obs = self.envs.reset()
        self.running_returns = np.zeros(num_envs, dtype=np.float64)

    def collect(self, model: ActorCritic) -> Rollout:
        t_max, n = self.t_max, len(self.running_returns)
        obs = np.empty((t_max + 1,) + self.obs.shape, dtype=self.obs.dtype)
        actions = np.empty((t_max, n), dtype=np.int64)
        rewards = np.empty((t_max, n), dtype=np.float32)
        dones = np.zeros((t_max, n), dtype=np.float32)
        rollout = Rollout(obs, actions, rewards, dones)
        for t in range(t_max):
            obs[t] = self.obs
            # The convolutions keep their graph, so the gradient needs no second pass through them. The dense
            # layers choose the action without one: run again on the whole rollout at once, their weight gradient
            # is one matrix product instead of T products of N rows summed.
            features = model.features(torch.from_numpy(obs[t]))
            rollout.features.append(features)
            with torch.no_grad():
                logits, _ = model.heads(features)
                actions[t] = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1).numpy()
            step = self.envs.step(actions[t])
            rewards[t] = step.rewards
            self.running_returns += step.rewards
            ended = step.terminated | step.truncated
            dones[t] = ended
            for i in np.flatnonzero(ended):
                rollout.episode_returns.append(float(self.running_returns[i]))
                self.running_returns[i] = 0.0
            rollout.truncated += [(t, i, final) for i, final in step.truncated_obs.items()]
            self.obs = step.obs
        obs[t_max] = self.obs
        return rollout

    def close(self) -> None:
        self.envs.close()
