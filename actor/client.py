"""The actor's side of the gRPC link: deadlines on every call, message limits taken from the learner,
optional TLS and bearer token."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import grpc

from a3c import codec
from a3c.errors import UserFacingError
from a3c.framing import Push, push_request
from a3c.tokens import Tokens
from a3c.wire import SERVICE_NAME, channel_options
from actor.metrics import ActorMetrics
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("actor")
Message = TypeVar("Message")
WAIT_REPORT_SECONDS = 30.0
LEAVE_TIMEOUT = 1.0
# gRPC's own reconnect backoff grows to 120 s: a learner back after a restart would wait that long for actors whose
# channel failed a few times; capped at 2 s, as the actor's own retries are at 5 s.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                     ("grpc.max_reconnect_backoff_ms", 2000)]
REFUSED_TOKEN_PAUSE = 120.0  # about a kubelet's refresh of a Secret volume
# The learner is away, starting, stopping or busy: worth trying again after a pause.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class LearnerUnreachable(UserFacingError):
    """The learner did not answer in time."""


class LearnerRefused(UserFacingError):
    """The learner answered, but not with what the actor needs (a wrong token, say)."""


class PendingPush:
    """A push on its way. result() waits for the reply, or raises grpc.RpcError, and counts the call once."""

    def __init__(self, client: LearnerClient, call: grpc.Future, start: float, sent: int) -> None:
        self._client, self._call, self._start, self._sent = client, call, start, sent
        self._arrived: float | None = None
        # The reply's arrival time: result() may be called long after it, or just before this callback runs.
        call.add_done_callback(self._mark_arrival)

    def _mark_arrival(self, _call: grpc.Future) -> float:
        self._arrived = self._arrived or time.perf_counter()
        return self._arrived

    def result(self) -> pb.PushGradientsResponse:
        return self._client.counted_call("PushGradients", self._start, self._sent, self._call.result,
                                         lambda: self._mark_arrival(self._call))


class LearnerClient:
    def __init__(self, address: str, actor_id: str, rpc_timeout: float, metrics: ActorMetrics,
                 tokens: Tokens | None = None, tls_ca: str = "") -> None:
        self.address = address
        self.actor_id = actor_id
        self.rpc_timeout = rpc_timeout
        self.metrics = metrics
        self._tokens = tokens or Tokens()
        self._presenting = ""
        self._skip_until: dict[str, float] = {}  # tokens the learner refused lately, presented again after that
        self._fresh_start_used = False  # every token refused, each tried once more since the last answer
        self._credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()) if tls_ca else None
        self.spec: pb.RunSpec | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.LearnerStub | None = None
        self._push_bytes: grpc.UnaryUnaryMultiCallable | None = None

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The token to present: the file's first (a rotated file is picked up on the next call), unless the
        learner refused it lately; then the next."""
        tokens = self._tokens.current()
        now = time.monotonic()
        self._presenting = next((t for t in tokens if self._skip_until.get(t, 0) <= now), tokens[0] if tokens else "")
        return (("authorization", f"Bearer {self._presenting}"),) if self._presenting else None

    def try_another_token(self) -> bool:
        """After UNAUTHENTICATED: whether another token is worth presenting. A rotation reaches the two sides in
        either order (on Kubernetes the kubelet refreshes each pod's Secret in its own time), so a refused token
        is passed over for a while, not forgotten; when all were refused, each gets one more try."""
        now = time.monotonic()
        self._skip_until[self._presenting] = now + REFUSED_TOKEN_PAUSE
        if any(self._skip_until.get(t, 0) <= now for t in self._tokens.current(look_now=True)):
            return True
        if self._fresh_start_used:
            return False
        self._fresh_start_used = True  # with every token passed over, _metadata presents the file's first again
        return True

    def _open(self, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
        options = [*(options or []), *RECONNECT_OPTIONS]
        if self._credentials is not None:
            return grpc.secure_channel(self.address, self._credentials, options=options)
        return grpc.insecure_channel(self.address, options=options)

    def connect(self, timeout: float | None, stop: threading.Event | None = None) -> pb.RunSpec | None:
        """Wait up to `timeout` seconds (None: as long as it takes) for a ready learner (None if `stop` is set
        first), fetch the run spec, and open a channel sized for it. Retries back off exponentially with jitter,
        capped at 5 s; the wait is logged when it starts and every half minute after."""
        stop = stop or threading.Event()
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else math.inf
        delay = 0.25
        next_report = started
        with self._open() as bootstrap:
            stub = pb_grpc.LearnerStub(bootstrap)
            while True:
                if stop.is_set():
                    return None
                attempt = min(max(deadline - time.monotonic(), 0.01), 2.0)  # short, so `stop` is noticed
                try:
                    spec = stub.GetRunSpec(pb.GetRunSpecRequest(actor_id=self.actor_id), metadata=self._metadata(),
                                           timeout=attempt, wait_for_ready=True)
                    break
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAUTHENTICATED and self.try_another_token():
                        continue
                    if err.code() not in TRANSIENT:
                        raise LearnerRefused(f"the learner at {self.address} refused: "
                                             f"{err.code().name}: {err.details()}") from None
                    reason = err.code().name
                now = time.monotonic()
                if now >= deadline:
                    raise LearnerUnreachable(f"no learner answered at {self.address} within {timeout:g}s")
                if now >= next_report:
                    log.info("waiting for the learner at %s (%s, %.0f s so far)", self.address, reason,
                             now - started)
                    next_report = now + WAIT_REPORT_SECONDS
                stop.wait(min(random.uniform(0.5, 1.0) * delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 5.0)
        self.close()
        self.spec = spec
        self._channel = self._open(channel_options(spec.max_message_bytes))
        self._stub = pb_grpc.LearnerStub(self._channel)
        # Pushes go out as bytes assembled by a3c/framing.py, so the gradients are never copied into a message.
        self._push_bytes = self._channel.unary_unary(f"/{SERVICE_NAME}/PushGradients",
                                                     response_deserializer=pb.PushGradientsResponse.FromString)
        return spec

    def counted_call(self, method: str, start: float, sent: int, wait: Callable[[], Message],
                     arrival: Callable[[], float] = time.perf_counter) -> Message:
        """Wait for a call's reply and count it: latency from `start` to `arrival()`, bytes both ways, failures,
        and the time spent waiting here."""
        waiting, error = time.perf_counter(), None
        try:
            reply = wait()
            self.metrics.received_bytes.inc(reply.ByteSize())
            self._fresh_start_used = False
            return reply
        except grpc.RpcError as err:
            error = err
            raise
        finally:
            self.metrics.rpc_seconds.labels(method).observe(arrival() - start)
            self.metrics.sent_bytes.inc(sent)
            if error is not None:
                self.metrics.rpc_errors.labels(method, error.code().name).inc()
            self.metrics.learner_wait_seconds.inc(time.perf_counter() - waiting)

    def _call(self, method: str, rpc: Callable, request: pb.GetParamsRequest | bytes):
        """One blocking call with the standard deadline, counted."""
        sent = len(request) if isinstance(request, bytes) else request.ByteSize()
        return self.counted_call(method, time.perf_counter(), sent,
                                 lambda: rpc(request, timeout=self.rpc_timeout, metadata=self._metadata()))

    def get_params(self, have_version: int) -> pb.Params:
        request = pb.GetParamsRequest(actor_id=self.actor_id, have_version=have_version)
        return self._call("GetParams", self._stub.GetParams, request)

    def _push_request(self, push: Push) -> bytes:
        return push_request(self.actor_id, push, codec.TORCH_DTYPES[self.spec.wire_dtype], self.spec.max_grad_norm)

    def push(self, push: Push) -> pb.PushGradientsResponse:
        """Send one gradient and wait for the reply (on this thread: no helper thread per call)."""
        return self._call("PushGradients", self._push_bytes, self._push_request(push))

    def start_push(self, push: Push) -> PendingPush:
        """Send one gradient and return at once. The gradients are encoded before this returns, so the caller
        may reuse their tensors."""
        request = self._push_request(push)
        start = time.perf_counter()
        call = self._push_bytes.future(request, timeout=self.rpc_timeout, metadata=self._metadata())
        self.metrics.learner_wait_seconds.inc(time.perf_counter() - start)
        return PendingPush(self, call, start, len(request))

    def leave(self) -> None:
        """Tell the learner this actor is stopping (best effort, within a second: it is on its way out)."""
        try:
            self._stub.Leave(pb.LeaveRequest(actor_id=self.actor_id), timeout=LEAVE_TIMEOUT, metadata=self._metadata())
        except grpc.RpcError as err:  # an older learner without Leave, or one that is gone: it will notice later
            log.info("could not tell the learner this actor leaves (%s)", err.code().name)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
