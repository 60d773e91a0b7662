"""The ceiling: an actor's own work (env steps, batched inference, forward+backward) plus an in-process
optimizer step, in one process with no gRPC. Frames/s per core; times the cores is what the machine allows."""

from __future__ import annotations

import time

import torch

from a3c.config import HyperParams
from a3c.envs import describe_env
from a3c.model import ModelSpec
from actor.gradients import compute_gradients
from actor.rollout import VectorRollout
from learner.global_model import GlobalModel


def measure_ceiling(env_id: str, num_envs: int, t_max: int, conv_precision: str, seconds: float,
                    repeats: int) -> tuple[list[float], str]:
    """Frames/s of `repeats` windows of `seconds` each, after one warm-up rollout, and the convolutions'
    precision (as an actor given `conv_precision` picks it)."""
    torch.set_num_threads(1)
    info = describe_env(env_id)
    spec = ModelSpec.for_env(info, HyperParams().center_frames)
    learner = GlobalModel(spec, "rmsprop", 7e-4)
    precision = learner.model.set_conv_precision(conv_precision)
    rollout = VectorRollout(env_id, num_envs, t_max, seed=0)

    def one_update() -> int:
        batch = rollout.collect(learner.model)
        result = compute_gradients(learner.model, batch, 0.99, 0.01, 0.5, 0.5, info.clip_rewards)
        learner.apply([g.clone() for g in result.gradients])
        return batch.agent_steps * info.frames_per_step

    one_update()
    rates = []
    for _ in range(repeats):
        frames, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            frames += one_update()
        rates.append(frames / (time.perf_counter() - start))
    rollout.close()
    return rates, precision
