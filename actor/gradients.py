"""From a rollout to a clipped gradient of the A3C loss, computed on the actor's copy of the network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from a3c.losses import a3c_loss, n_step_returns
from a3c.model import ActorCritic
from actor.rollout import Rollout


@dataclass
class GradientResult:
    gradients: list[torch.Tensor]
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float  # before clipping


def rollout_returns(model: ActorCritic, rollout: Rollout, gamma: float, clip_rewards: bool) -> torch.Tensor:
    """n-step returns [T, N], bootstrapped from V(s_T), and from V(final state) where a time limit cut in."""
    t_max = rollout.actions.shape[0]
    rewards = torch.from_numpy(np.sign(rollout.rewards) if clip_rewards else rollout.rewards)
    with torch.no_grad():
        _, bootstrap = model(torch.from_numpy(rollout.obs[t_max]))
        if rollout.truncated:
            # A time limit is not a real end: the return goes on past it, estimated by V(final state).
            _, final_values = model(torch.from_numpy(np.stack([o for _, _, o in rollout.truncated])))
            rewards = rewards.clone()
            for (t, i, _), value in zip(rollout.truncated, final_values):
                rewards[t, i] += gamma * value
    return n_step_returns(rewards, torch.from_numpy(rollout.dones), bootstrap, gamma)


def compute_gradients(model: ActorCritic, rollout: Rollout, gamma: float, entropy_coef: float,
                      value_coef: float, max_grad_norm: float, clip_rewards: bool) -> GradientResult:
    returns = rollout_returns(model, rollout, gamma, clip_rewards)
    # The rollout's own convolution passes (time-major, like the returns); the parameters have not moved since.
    logits, values = model.heads(torch.cat(rollout.features))
    loss = a3c_loss(logits, values, torch.from_numpy(rollout.actions.reshape(-1)), returns.reshape(-1),
                    entropy_coef, value_coef)
    model.zero_grad(set_to_none=True)
    loss.total.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    return GradientResult(gradients=[p.grad for p in model.parameters()], policy_loss=loss.policy.item(),
                          value_loss=loss.value.item(), entropy=loss.entropy.item(), grad_norm=norm.item())
