"""The peer: Stable-Baselines3 A2C on the same env and machine (run in its own process by bench.run).

Prints one JSON line: frames/s over the timed part of `model.learn`, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    import ale_py
    import gymnasium as gym
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from a3c.envs import is_atari

    gym.register_envs(ale_py)
    torch.set_num_threads(2)  # SB3 runs one process; let it use the machine's cores for its network
    atari = is_atari(args.env)
    if atari:
        env = VecFrameStack(make_atari_env(args.env, n_envs=args.n_envs, seed=0), n_stack=4)
        policy = "CnnPolicy"
    else:
        env = make_vec_env(args.env, n_envs=args.n_envs, seed=0)
        policy = "MlpPolicy"
    frame_skip = 4 if atari else 1

    class Timer(BaseCallback):
        """Counts agent steps between the end of the warm-up and the time limit, then stops learning."""

        def __init__(self) -> None:
            super().__init__()
            self.start = self.start_steps = None

        def _on_step(self) -> bool:
            if self.start is None and self.num_timesteps >= 5 * args.n_envs * 5:
                self.start, self.start_steps = time.perf_counter(), self.num_timesteps
            return self.start is None or time.perf_counter() - self.start < args.seconds

    timer = Timer()
    A2C(policy, env, seed=0, device="cpu").learn(total_timesteps=10**9, callback=timer)
    steps = timer.num_timesteps - timer.start_steps
    seconds = time.perf_counter() - timer.start
    print(json.dumps({"agent_steps_per_second": steps / seconds,
                      "frames_per_second": steps * frame_skip / seconds, "n_envs": args.n_envs}))


if __name__ == "__main__":
    main()
