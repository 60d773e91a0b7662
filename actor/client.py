"""The actor's side of the gRPC link: deadlines on every call, message limits taken from the learner,
optional TLS and bearer token."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

import grpc

from a3c import codec
from a3c.framing import Push, push_request
from a3c.reaching import TokenPresenter, channel_credentials, open_channel, wait_for_learner
from a3c.tokens import Tokens
from a3c.wire import SERVICE_NAME, channel_options
from actor.metrics import ActorMetrics
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("actor")
Message = TypeVar("Message")
LEAVE_TIMEOUT = 1.0


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
        self.tokens = TokenPresenter(tokens or Tokens())
        self._credentials = channel_credentials(tls_ca)
        self.spec: pb.RunSpec | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.LearnerStub | None = None
        self._push_bytes: grpc.UnaryUnaryMultiCallable | None = None

    def connect(self, timeout: float | None, stop: threading.Event | None = None) -> pb.RunSpec | None:
        """Wait up to `timeout` seconds (None: as long as it takes) for a ready learner (None if `stop` is set
        first), fetch the run spec, and open a channel sized for it."""
        with open_channel(self.address, self._credentials) as bootstrap:
            stub = pb_grpc.LearnerStub(bootstrap)
            spec = wait_for_learner(
                lambda seconds: stub.GetRunSpec(pb.GetRunSpecRequest(actor_id=self.actor_id),
                                                metadata=self.tokens.metadata(), timeout=seconds, wait_for_ready=True),
                self.address, timeout, stop or threading.Event(), self.tokens.refused)
        if spec is None:
            return None
        self.close()
        self.spec = spec
        self._channel = open_channel(self.address, self._credentials, channel_options(spec.max_message_bytes))
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
            self.tokens.answered()
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
                                 lambda: rpc(request, timeout=self.rpc_timeout, metadata=self.tokens.metadata()))

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
        call = self._push_bytes.future(request, timeout=self.rpc_timeout, metadata=self.tokens.metadata())
        self.metrics.learner_wait_seconds.inc(time.perf_counter() - start)
        return PendingPush(self, call, start, len(request))

    def leave(self) -> None:
        """Tell the learner this actor is stopping (best effort, within a second: it is on its way out)."""
        try:
            self._stub.Leave(pb.LeaveRequest(actor_id=self.actor_id), timeout=LEAVE_TIMEOUT,
                             metadata=self.tokens.metadata())
        except grpc.RpcError as err:  # an older learner without Leave, or one that is gone: it will notice later
            log.info("could not tell the learner this actor leaves (%s)", err.code().name)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
