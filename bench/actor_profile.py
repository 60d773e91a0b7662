"""Where a training actor's time goes on this CPU: one thread, one rollout of the defaults (8 envs x 20 steps) at a
time, split into stepping the emulators, the rollout's network passes (convolutions with their graph, the action
picked by the dense layers) and the gradient (the dense layers again over the whole rollout, the loss, backward);
then the same gradient with the network in standard memory order and with oneDNN off, to show what the defaults
buy on this CPU. Medians of --rounds, in milliseconds per rollout.

    python -m bench.actor_profile [--env PongNoFrameskip-v4] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from a3c.config import ActorConfig, HyperParams
from a3c.cpu import machine
from a3c.envs import describe_env
from a3c.model import ModelSpec, build_model
from actor.gradients import compute_gradients
from actor.rollout import VectorRollout


def median_ms(work: Callable[[], object], rounds: int) -> float:
    work()  # warm: oneDNN picks and caches its kernels on the first call of each shape
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def profile(env_id: str, rounds: int) -> dict:
    torch.set_num_threads(1)  # as each actor runs
    defaults, hyper = ActorConfig(), HyperParams()
    info = describe_env(env_id)
    spec = ModelSpec.for_env(info, hyper.center_frames)
    model = build_model(spec)
    precision = model.set_conv_precision(defaults.conv_precision)
    rollout = VectorRollout(env_id, defaults.num_envs, hyper.t_max, seed=0)
    idle = np.zeros(defaults.num_envs, dtype=np.int64)

    def rollout_and_gradient(network) -> Callable[[], object]:
        return lambda: compute_gradients(network, rollout.collect(network), hyper.gamma, hyper.entropy_coef,
                                         hyper.value_coef, hyper.max_grad_norm, info.clip_rewards)

    whole = median_ms(rollout_and_gradient(model), rounds)
    collect = median_ms(lambda: rollout.collect(model), rounds)
    envs = median_ms(lambda: [rollout.envs.step(idle) for _ in range(hyper.t_max)], rounds)
    found = {"env": env_id, "machine": machine(), "conv_precision": precision, "rollout": f"{defaults.num_envs} envs x "
             f"{hyper.t_max} steps", "frames_per_rollout": defaults.num_envs * hyper.t_max * info.frames_per_step,
             "ms_per_rollout": {"rollout_and_gradient": whole, "stepping_the_envs": envs,
                                "network_in_the_rollout": collect - envs, "gradient": whole - collect}}
    found["frames_per_second_per_core"] = found["frames_per_rollout"] / whole * 1e3
    if info.model_kind == "cnn":
        standard = build_model(spec).to(memory_format=torch.contiguous_format)
        standard.load_state_dict(model.state_dict())
        standard.channels_last = False
        standard.set_conv_precision(precision)
        variants = {"defaults": model, "standard_memory_order": standard}
        found["rollout_and_gradient_ms"] = {name: median_ms(rollout_and_gradient(network), rounds)
                                            for name, network in variants.items()}
        with torch.backends.mkldnn.flags(enabled=False):
            found["rollout_and_gradient_ms"]["oneDNN_off"] = median_ms(rollout_and_gradient(model), rounds)
    rollout.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.actor_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(json.dumps(profile(args.env, args.rounds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
