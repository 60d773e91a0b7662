"""The evaluator's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUND_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class EvaluatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.mean_return = Gauge("a3c_eval_mean_return", "Mean return of the last round's greedy episodes",
                                 registry=registry)
        self.min_return = Gauge("a3c_eval_min_return", "Lowest return of the last round", registry=registry)
        self.max_return = Gauge("a3c_eval_max_return", "Highest return of the last round", registry=registry)
        self.best_mean_return = Gauge("a3c_eval_best_mean_return", "Best round mean so far (the one in best-eval.pt)",
                                      registry=registry)
        self.version = Gauge("a3c_eval_version", "Parameter version the last round played", registry=registry)
        self.episodes = Counter("a3c_eval_episodes_total", "Greedy episodes played", registry=registry)
        self.rounds = Counter("a3c_eval_rounds_total", "Evaluation rounds, by what the learner made of the report",
                              ["report"], registry=registry)
        for outcome in ("accepted", "refused", "undelivered"):
            self.rounds.labels(outcome)
        self.videos = Counter("a3c_eval_videos_total", "Videos recorded", registry=registry)
        self.round_seconds = Histogram("a3c_eval_round_seconds", "Time to play one round", buckets=ROUND_BUCKETS,
                                       registry=registry)

    def round(self, version: int, returns: list[float], best: float) -> None:
        self.mean_return.set(sum(returns) / len(returns))
        self.min_return.set(min(returns))
        self.max_return.set(max(returns))
        self.best_mean_return.set(best)
        self.version.set(version)
        self.episodes.inc(len(returns))
