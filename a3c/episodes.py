"""Whole episodes played by a network, greedy or sampled: what `a3c evaluate`, `a3c play` and the evaluator
service measure a policy by (training returns come from the actors' rollouts instead)."""

from __future__ import annotations

import statistics
import threading
from typing import Callable, Optional

import numpy as np
import torch

from a3c.envs import make_env, observation_array

# An episode that never ends (a policy that never serves, say) is cut here: 27,000 agent steps are the
# 108,000 frames ALE allows a game.
MAX_STEPS = 27_000
Network = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # obs [1, ...] -> (logits, value)


def play_episode(env_id: str, network: Network, greedy: bool, seed: int,
                 on_frame: Optional[Callable[[np.ndarray], None]] = None, render_mode: Optional[str] = None,
                 stop: Optional[threading.Event] = None) -> float:
    """One episode (cut after MAX_STEPS agent steps, or when `stop` is set); returns its unclipped return.
    `on_frame` gets each rendered RGB frame."""
    env = make_env(env_id, render_mode=render_mode)
    generator = torch.Generator().manual_seed(seed)
    try:
        obs, _ = env.reset(seed=seed)
        total = 0.0
        for _ in range(MAX_STEPS):
            if stop is not None and stop.is_set():
                break
            with torch.no_grad():
                logits, _ = network(torch.from_numpy(observation_array(obs)).unsqueeze(0))
            if greedy:
                action = int(logits.argmax(-1))
            else:
                action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if on_frame is not None:
                on_frame(env.render())
            if terminated or truncated:
                break
        return total
    finally:
        env.close()


def summarize(returns: list[float]) -> dict:
    return {"episodes": len(returns), "mean": statistics.fmean(returns),
            "std": statistics.pstdev(returns), "min": min(returns), "max": max(returns)}
