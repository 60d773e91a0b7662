"""The learner's running picture of training: frames, updates, episodes, returns, losses, throughput."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Iterable

from learner.metrics import LearnerMetrics

RETURN_WINDOW = 100
ACTIVE_WINDOW_SECONDS = 60.0
EVALUATION_KEYS = ("eval_mean_return", "eval_min_return", "eval_max_return", "eval_episodes", "eval_version")


class TrainingStats:
    """Thread-safe counters updated on every push, mirrored to Prometheus; `snapshot()` is one progress record."""

    def __init__(self, metrics: LearnerMetrics, clock=time.monotonic) -> None:
        self.metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.env_frames = 0
        self.agent_steps = 0
        self.updates = 0
        self.episodes = 0
        self.returns: deque[float] = deque(maxlen=RETURN_WINDOW)
        self.best_mean_return: float | None = None
        self._loss_sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "grad_norm": 0.0, "staleness": 0.0}
        self._loss_count = 0
        self._last_seen: dict[str, float] = {}
        self._rate_mark = (self.started, 0)
        self.elapsed_before = 0.0  # training seconds of earlier incarnations (after a resume)
        # The evaluator's last round (None until one is reported).
        self.evaluation: dict[str, float | None] = dict.fromkeys(EVALUATION_KEYS)

    def record_rollout(self, env_frames: int, agent_steps: int, episode_returns: Iterable[float]) -> None:
        with self._lock:
            self.env_frames += env_frames
            self.agent_steps += agent_steps
            for value in episode_returns:
                self.episodes += 1
                self.returns.append(float(value))
                self.metrics.episode_return.observe(value)
            self.metrics.env_frames.inc(env_frames)
            self.metrics.agent_steps.inc(agent_steps)
            if episode_returns:
                self.metrics.episodes.inc(len(episode_returns))
                mean = self.mean_return()
                self.metrics.mean_return.set(mean)
                if len(self.returns) == RETURN_WINDOW and (self.best_mean_return is None
                                                           or mean > self.best_mean_return):
                    self.best_mean_return = mean

    def heard_from(self, actor_id: str) -> None:
        with self._lock:
            self._last_seen[actor_id] = self._clock()

    def left(self, actor_id: str) -> None:
        """The actor said it is stopping: no longer active, from now on."""
        with self._lock:
            self._last_seen.pop(actor_id, None)

    def record_update(self, policy_loss: float, value_loss: float, entropy: float, grad_norm: float,
                      staleness: int) -> None:
        with self._lock:
            self.updates += 1
            self.metrics.updates.inc()
            for key, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                               ("entropy", entropy), ("grad_norm", grad_norm), ("staleness", staleness)):
                self._loss_sums[key] += value
            self._loss_count += 1

    def record_evaluation(self, version: int, returns: list[float]) -> dict:
        """The evaluator's latest round, as the progress records show it."""
        with self._lock:
            self.evaluation = {"eval_mean_return": round(sum(returns) / len(returns), 3),
                               "eval_min_return": min(returns), "eval_max_return": max(returns),
                               "eval_episodes": len(returns), "eval_version": version}
            return dict(self.evaluation)

    def mean_return(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    def active_actors(self) -> int:
        cutoff = self._clock() - ACTIVE_WINDOW_SECONDS
        with self._lock:
            return sum(1 for seen in self._last_seen.values() if seen >= cutoff)

    def snapshot(self, version: int) -> dict:
        """One progress record; loss means and the recent frame rate cover the time since the last one."""
        now = self._clock()
        with self._lock:
            mark_time, mark_frames = self._rate_mark
            recent_fps = (self.env_frames - mark_frames) / max(now - mark_time, 1e-9)
            self._rate_mark = (now, self.env_frames)
            losses = {k: (v / self._loss_count if self._loss_count else None) for k, v in self._loss_sums.items()}
            self._loss_sums = dict.fromkeys(self._loss_sums, 0.0)
            self._loss_count = 0
            seconds = self.elapsed_before + now - self.started  # a resumed run counts its earlier time too
            mean = self.mean_return()
            record = {
                "time": time.time(),
                "seconds": round(seconds, 3),
                "frames": self.env_frames,
                "agent_steps": self.agent_steps,
                "updates": self.updates,
                "version": version,
                "episodes": self.episodes,
                "mean_return": None if mean is None else round(mean, 3),
                "return_window": len(self.returns),
                "best_mean_return": self.best_mean_return,
                "frames_per_second": round(recent_fps, 1),
                "average_frames_per_second": round(self.env_frames / max(seconds, 1e-9), 1),
                **{k: (None if v is None or not math.isfinite(v) else round(v, 6)) for k, v in losses.items()},
                **self.evaluation,
            }
        record["actors"] = self.active_actors()
        return record

    def state(self) -> dict:
        with self._lock:
            return {"env_frames": self.env_frames, "agent_steps": self.agent_steps, "updates": self.updates,
                    "episodes": self.episodes, "returns": list(self.returns),
                    "best_mean_return": self.best_mean_return,
                    "seconds": self.elapsed_before + self._clock() - self.started}

    def load_state(self, state: dict) -> None:
        with self._lock:
            self.env_frames = int(state["env_frames"])
            self.agent_steps = int(state["agent_steps"])
            self.updates = int(state["updates"])
            self.episodes = int(state["episodes"])
            self.returns = deque((float(r) for r in state["returns"]), maxlen=RETURN_WINDOW)
            self.best_mean_return = state["best_mean_return"]
            self.elapsed_before = float(state["seconds"])
            if self.returns:
                self.metrics.mean_return.set(self.mean_return())
            self._rate_mark = (self._clock(), self.env_frames)


def format_progress(record: dict) -> str:
    """The progress line a person reads."""
    mean = record["mean_return"]
    mean_text = "n/a" if mean is None else f"{mean:+.2f} ({record['return_window']} ep)"
    entropy = record.get("entropy")
    return (f"{record['seconds']:7.0f}s  frames {record['frames']:>11,}  "
            f"{record['frames_per_second']:>7,.0f} frames/s  updates {record['updates']:>8,}  "
            f"episodes {record['episodes']:>6,}  mean return {mean_text}  actors {record['actors']}"
            + ("" if entropy is None else f"  entropy {entropy:.3f}")
            + ("" if record.get("eval_mean_return") is None else
               f"  evaluation {record['eval_mean_return']:+.2f} (version {record['eval_version']})"))
