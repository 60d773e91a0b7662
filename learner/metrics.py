"""The learner's Prometheus metrics, and a server interceptor that times and counts every RPC by method and code."""

from __future__ import annotations

import time
from typing import Callable, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from a3c.metrics import LAG_BUCKETS, LATENCY_BUCKETS, RETURN_BUCKETS

# Every reason a push can be refused for, so each series exists (at 0) before the first refusal.
REJECT_REASONS = ("malformed", "no_actor_id", "bad_version", "bad_counts", "bad_returns", "bad_loss", "non_finite",
                  "bad_dtype", "bad_shape", "bad_size", "bad_scales", "missing_tensor", "unknown_tensor",
                  "tensor_order", "duplicate", "future_version", "stale", "huge_norm", "unauthenticated",
                  "shutting_down", "cancelled", "cooling_down")
NORM_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0, 1000.0)


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.updates = Counter("a3c_learner_updates_total", "Gradients applied to the global network",
                               registry=registry)
        self.param_version = Gauge("a3c_learner_param_version", "Version of the global parameters",
                                   registry=registry)
        self.env_frames = Counter("a3c_learner_env_frames_total", "Emulator frames reported by actors",
                                  registry=registry)
        self.agent_steps = Counter("a3c_learner_agent_steps_total", "Agent steps reported by actors",
                                   registry=registry)
        self.episodes = Counter("a3c_learner_episodes_total", "Episodes finished by actors", registry=registry)
        self.episode_return = Histogram("a3c_learner_episode_return", "Unclipped return of finished episodes",
                                        buckets=RETURN_BUCKETS, registry=registry)
        self.mean_return = Gauge("a3c_learner_mean_return", "Mean return of the last 100 episodes",
                                 registry=registry)
        self.rejected = Counter("a3c_learner_gradients_rejected_total", "Pushed gradients refused, by reason",
                                ["reason"], registry=registry)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.staleness = Histogram("a3c_learner_gradient_staleness",
                                   "Versions between a gradient's base and the learner's current version",
                                   buckets=LAG_BUCKETS, registry=registry)
        self.gradient_norm = Histogram("a3c_learner_gradient_norm", "L2 norm of each applied gradient",
                                       buckets=NORM_BUCKETS, registry=registry)
        self.apply_seconds = Histogram("a3c_learner_apply_seconds", "Time to apply one gradient (optimizer step)",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        # Its rate is the share of time the learner spends on pushes under the network's lock: near 1, more actors
        # only queue (the autoscaling manifests scale actors on 1 minus it).
        self.busy_seconds = Counter("a3c_learner_busy_seconds_total",
                                    "Seconds the global network was held to apply pushes", registry=registry)
        self.checkpoint_version = Gauge("a3c_learner_checkpoint_version",
                                        "Version of the newest checkpoint written or resumed from (-1: none yet)",
                                        registry=registry)
        self.checkpoint_version.set(-1)
        self.actors_active = Gauge("a3c_learner_actors_active", "Actors heard from in the last minute",
                                   registry=registry)
        self.actors_cooling_down = Gauge("a3c_learner_actors_cooling_down",
                                         "Actors refused outright for a while: too many invalid pushes",
                                         registry=registry)
        self.rpc_handled = Counter("a3c_learner_rpc_handled_total", "RPCs completed, by method and gRPC code",
                                   ["method", "code"], registry=registry)
        self.rpc_seconds = Histogram("a3c_learner_rpc_seconds", "Server-side RPC handling time, by method",
                                     ["method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.pushes_waiting = Gauge("a3c_learner_pushes_waiting",
                                    "Checked pushes waiting for the global network's lock", registry=registry)
        self.pushes_abandoned = Counter("a3c_learner_pushes_abandoned_total",
                                        "Pushes whose caller cancelled or ran out of time before the learner "
                                        "answered", registry=registry)

        self.frontend_restarts = Counter("a3c_learner_frontend_restarts_total",
                                         "gRPC front processes (--frontends) started again after they died",
                                         registry=registry)

    def watch_actors(self, count: Callable[[], int]) -> None:
        self.actors_active.set_function(count)

    def refused(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self.rpc_seconds.labels(method).observe(seconds)
        self.rpc_handled.labels(method, code).inc()

    def push_abandoned(self) -> None:
        self.pushes_abandoned.inc()


class RpcEvents(Protocol):
    """What the gRPC-facing parts report: LearnerMetrics itself, or a front process's link to it."""

    def refused(self, reason: str) -> None: ...

    def rpc_done(self, method: str, code: str, seconds: float) -> None: ...

    def push_abandoned(self) -> None: ...


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times unary RPCs by method name and final status code."""

    def __init__(self, metrics: RpcEvents) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        done = self.metrics.rpc_done

        def timed(request, context):
            start = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                done(method, code, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
