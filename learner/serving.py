"""How the learner's process takes gRPC calls: a server of its own, or front processes on its port
(`--frontends N`). Either way calls are taken from `start()` on, answered UNAVAILABLE (health NOT_SERVING) until
`open()`, and the same servicer decides every push."""

from __future__ import annotations

from typing import Protocol

from grpc_health.v1 import health, health_pb2

from a3c.config import LearnerConfig
from a3c.errors import UserFacingError
from a3c.wire import SERVICE_NAME
from learner.front_pool import FrontendPool, reserve_port
from learner.front_process import FrontSpec
from learner.grpc_server import bound_server
from learner.metrics import LearnerMetrics
from learner.servicer import LearnerServicer

# The longest the learner waits for its fronts to listen: each imports torch in a fresh process.
FRONTS_BIND_TIMEOUT = 120.0


class CannotServe(UserFacingError):
    """The learner cannot take calls on its address; the message says why in one line."""


class Serving(Protocol):
    port: int
    description: str  # for the start-up line

    def start(self) -> None:
        """Take calls, answering them UNAVAILABLE until `open()`."""

    def open(self) -> None:
        """Report SERVING and let calls through (the servicer is ready)."""

    def stop(self, grace: float | None) -> None:
        """Stop taking calls; those in flight get `grace` seconds."""


def _cannot_listen(listen: str) -> CannotServe:
    return CannotServe(f"cannot listen on {listen} (address in use or not local)")


class ServedAlone:
    """One gRPC server in the learner's own process, with the standard health service."""

    def __init__(self, config: LearnerConfig, servicer: LearnerServicer, metrics: LearnerMetrics) -> None:
        self.description = ""
        self.health = health.HealthServicer()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server, self.port = bound_server(config, servicer, self.health, metrics,
                                              servicer.run_spec.max_message_bytes, config.listen, share_port=False)
        if not self.port:
            raise _cannot_listen(config.listen)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()

    def open(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace=grace).wait()


class ServedByFronts:
    """Front processes sharing the learner's port (learner/front_pool.py); the port is held by sockets that never
    listen, so no other program can take it while fronts come and go."""

    def __init__(self, config: LearnerConfig, servicer: LearnerServicer, metrics: LearnerMetrics) -> None:
        try:
            self._reservations = reserve_port(config.listen)
        except OSError:
            raise _cannot_listen(config.listen) from None
        self.port = self._reservations[0].getsockname()[1]
        self.description = f", {config.frontends} gRPC front processes"
        model = servicer.model
        spec = FrontSpec(config, f"{config.listen.rsplit(':', 1)[0]}:{self.port}",
                         servicer.run_spec.SerializeToString(), list(model.layout), model.wire_dtype,
                         servicer.limits)
        self.pool = FrontendPool(spec, config.frontends, servicer, metrics)

    def start(self) -> None:
        self.pool.start()

    def open(self) -> None:
        try:  # all of them before the first actor connects: a gRPC connection stays with one front
            self.pool.wait_bound(timeout=FRONTS_BIND_TIMEOUT)
        except OSError as err:
            raise CannotServe(str(err)) from None
        self.pool.set_serving(True)

    def stop(self, grace: float | None) -> None:
        self.pool.stop(grace)
        for reservation in self._reservations:
            reservation.close()


def serving_for(config: LearnerConfig, servicer: LearnerServicer, metrics: LearnerMetrics) -> Serving:
    """Bound to `config.listen` (port 0: a free port), not yet taking calls; CannotServe if the address is taken."""
    if config.frontends:
        return ServedByFronts(config, servicer, metrics)
    return ServedAlone(config, servicer, metrics)
