"""The A3C objective as pure functions of tensors (Mnih et al. 2016, Algorithm S3).

Shapes: T rollout steps, N environments, A actions. Time is the leading dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def n_step_returns(rewards: torch.Tensor, dones: torch.Tensor, bootstrap: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """R_t = r_t + gamma * R_{t+1}, restarting at episode ends, with R_T = V(s_T) as the bootstrap.

    rewards, dones: [T, N] (dones is 1.0 where the step ended an episode); bootstrap: [N].
    """
    returns = torch.empty_like(rewards)
    running = bootstrap
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * (1.0 - dones[t]) * running
        returns[t] = running
    return returns


@dataclass
class A3CLoss:
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


def a3c_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
             entropy_coef: float, value_coef: float) -> A3CLoss:
    """Policy-gradient loss with the advantage R - V(s), half squared value error, and an entropy bonus.

    logits [B, A], values [B], actions [B] (int64), returns [B]; averaged over the batch.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    advantages = returns - values.detach()
    chosen = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
    policy = -(chosen * advantages).mean()
    value = 0.5 * (returns - values).pow(2).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    total = policy + value_coef * value - entropy_coef * entropy
    return A3CLoss(total=total, policy=policy, value=value, entropy=entropy)
