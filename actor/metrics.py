"""The actor's Prometheus metrics and the plain totals it logs when it stops."""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from a3c.metrics import LAG_BUCKETS, LATENCY_BUCKETS, RETURN_BUCKETS

ROLLOUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ActorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.pushes_accepted = 0
        self.frames_counted = 0
        self.env_frames = Counter("a3c_actor_env_frames_total",
                                  "Emulator frames of rollouts whose gradient the learner applied", registry=registry)
        self.episodes = Counter("a3c_actor_episodes_total", "Episodes finished", registry=registry)
        self.episode_return = Histogram("a3c_actor_episode_return", "Unclipped return of finished episodes",
                                        buckets=RETURN_BUCKETS, registry=registry)
        self.pushes = Counter("a3c_actor_pushes_total", "Gradient pushes answered by the learner, by outcome",
                              ["outcome"], registry=registry)
        for outcome in ("accepted", "refused"):
            self.pushes.labels(outcome)
        self.gradients_dropped = Counter("a3c_actor_gradients_dropped_total",
                                         "Gradients never sent: replaced by a newer one while the learner was away",
                                         registry=registry)
        self.rollout_seconds = Histogram("a3c_actor_rollout_seconds", "Time to collect one rollout",
                                         buckets=ROLLOUT_BUCKETS, registry=registry)
        self.rpc_seconds = Histogram("a3c_actor_rpc_seconds", "Client-side RPC latency, by method", ["method"],
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.rpc_errors = Counter("a3c_actor_rpc_errors_total", "Failed RPCs, by method and gRPC code",
                                  ["method", "code"], registry=registry)
        self.sent_bytes = Counter("a3c_actor_sent_bytes_total", "Request bytes sent to the learner",
                                  registry=registry)
        self.received_bytes = Counter("a3c_actor_received_bytes_total", "Response bytes received from the learner",
                                      registry=registry)
        self.learner_wait_seconds = Counter(
            "a3c_actor_learner_wait_seconds", "Time the actor spent in calls to the learner instead of its own work: "
            "sending pushes, waiting for the replies it needs, pulls", registry=registry)
        self.policy_lag = Histogram("a3c_actor_policy_lag",
                                    "Updates other actors made between this gradient's base version and its push",
                                    buckets=LAG_BUCKETS, registry=registry)

    def record_accepted(self, env_frames: int, episode_returns: Sequence[float], lag: int) -> None:
        """A push the learner applied; the learner counts exactly these frames and episodes too."""
        self.pushes.labels("accepted").inc()
        self.pushes_accepted += 1
        self.env_frames.inc(env_frames)
        self.frames_counted += env_frames
        self.episodes.inc(len(episode_returns))
        for value in episode_returns:
            self.episode_return.observe(value)
        self.policy_lag.observe(lag)

    def record_refused(self) -> None:
        self.pushes.labels("refused").inc()
