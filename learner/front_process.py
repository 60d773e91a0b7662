"""A gRPC front process (`--frontends N`): serves the Learner service on the learner's port, checks and decodes
each push into shared memory, and leaves accounting and applying to the learner's process (learner/front_pool.py),
which it asks through a pipe per call slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable, Iterator

import grpc
import torch
from grpc_health.v1 import health, health_pb2

from a3c.codec import Layout
from a3c.config import LearnerConfig
from a3c.framing import ParamsEncoder, push_reply
from a3c.memory import keep_freed_memory
from a3c.wire import SERVICE_NAME
from learner.grpc_server import bound_server
from learner.servicer import STARTING, GradientCheck, PushLimits, PushRefused, count_if_abandoned, deadline_of
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("learner")


@dataclass(frozen=True)
class FrontSpec:
    """What a front process needs to serve: everything but the model."""

    config: LearnerConfig
    address: str
    run_spec: bytes
    layout: Layout
    wire_dtype: torch.dtype
    limits: PushLimits


@dataclass
class Slot:
    """One call in flight between a front and the learner: its pipe end, two shared flat float32 buffers and two
    shared counters (plain shared memory, no locks: a process killed while touching them leaves no lock held)."""

    conn: Connection
    gradient: torch.Tensor  # written by the front, read by the learner while applying
    params: torch.Tensor    # written by the learner under its lock, read by the front for the reply
    call: ctypes.c_long       # the number of the front's call now using this slot
    cancelled: ctypes.c_long  # the number of the last call that ended (a cancel, or a caller gone)

    def still_wanted(self) -> bool:
        return self.cancelled.value != self.call.value


class _LearnerLink:
    """A front's report of refusals and finished RPCs to the learner's metrics (RpcEvents), from any thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, *event: object) -> None:
        with self._lock:
            with contextlib.suppress(OSError):  # the learner is gone: this front is about to exit anyway
                self._conn.send(event)

    def refused(self, reason: str) -> None:
        self.send("refused", reason, "", False)

    def refused_push(self, reason: str, actor_id: str, invalid: bool) -> None:
        """A push this front refused: counted, and when invalid, against its actor's refusal budget."""
        self.send("refused", reason, actor_id, invalid)

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self.send("rpc", method, code, seconds)

    def push_abandoned(self) -> None:
        self.send("abandoned")

    def left(self, actor_id: str) -> None:
        self.send("left", actor_id)


class FrontServicer(pb_grpc.LearnerServicer):
    """The Learner service in a front process: checks and decodes here, accounts and applies in the learner."""

    def __init__(self, spec: FrontSpec, slots: list[Slot], serving, link: _LearnerLink) -> None:
        self.run_spec = pb.RunSpec.FromString(spec.run_spec)
        self.encode = ParamsEncoder(spec.layout, spec.wire_dtype)
        self.check = GradientCheck(spec.layout, spec.limits)
        self.serving, self.link = serving, link
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)
        self._calls = itertools.count(1)

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[Slot]:
        """A free slot for this call. If the call ends early (cancelled, the caller gone), the learner sees it
        under its lock and applies nothing, as when it serves alone; a later call in the slot is not affected."""
        slot, number = self._free.get(), next(self._calls)
        slot.call.value = number
        context.add_callback(lambda: setattr(slot.cancelled, "value", number))
        try:
            yield slot
        finally:
            self._free.put(slot)

    def _ask(self, slot: Slot, context: grpc.ServicerContext, *message: object) -> tuple[int, bool]:
        """The learner's answer (version, whether the slot holds fresh parameters), or the call aborted."""
        try:
            slot.conn.send(message)
            reply = slot.conn.recv()
        except (EOFError, OSError):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the learner is gone")
        if reply[0] == "refused":  # the learner counted it
            _, code, reason, text = reply
            context.abort(grpc.StatusCode[code], f"{reason}: {text}")
        return reply[1], reply[2]

    def GetRunSpec(self, request: pb.GetRunSpecRequest, context: grpc.ServicerContext) -> pb.RunSpec:
        if not self.serving.value:
            context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)
        return self.run_spec

    def GetParams(self, request: pb.GetParamsRequest, context: grpc.ServicerContext) -> pb.Params | bytes:
        if not self.serving.value:
            context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)
        with self._slot(context) as slot:
            version, fresh = self._ask(slot, context, "params", request.have_version)
            return self.encode.params(version, slot.params) if fresh else pb.Params(version=version)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveResponse:
        self.link.left(request.actor_id)
        return pb.LeaveResponse()

    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationReply:
        if not self.serving.value:
            context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)
        with self._slot(context) as slot:  # the learner checks and records it
            self._ask(slot, context, "evaluation", request.SerializeToString())
        return pb.EvaluationReply()

    def PushGradients(self, request: pb.PushGradientsRequest, context: grpc.ServicerContext) -> bytes:
        # Registered after the slot's own callback, so the learner is told only once the slot shows the cancel.
        with self._slot(context) as slot, _answered(count_if_abandoned(context, self.link.push_abandoned)):
            try:
                if not self.serving.value:
                    raise PushRefused(grpc.StatusCode.UNAVAILABLE, "shutting_down", STARTING)
                gradient_norm = self.check(request, slot.gradient)
            except PushRefused as refused:
                self.link.refused_push(refused.reason, request.actor_id,
                                       refused.code == grpc.StatusCode.INVALID_ARGUMENT)
                context.abort(refused.code, f"{refused.reason}: {refused}")
            # Every field but the gradient, which the learner reads from the slot (a field added to the
            # contract travels too).
            summary = pb.PushGradientsRequest(**{field.name: value for field, value in request.ListFields()
                                                 if field.name != "gradients"})
            version, fresh = self._ask(slot, context, "push", summary.SerializeToString(), gradient_norm,
                                       deadline_of(context))
            return self.encode.push_reply(version, slot.params) if fresh else push_reply(version)


@contextlib.contextmanager
def _answered(answered: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        answered()


class _FollowingHealth(health.HealthServicer):
    """Health checks answered from the learner's readiness at the moment of the call (watchers are told by the
    front's loop)."""

    def __init__(self, serving) -> None:
        super().__init__()
        self._serving = serving

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext):
        if request.service not in ("", SERVICE_NAME):
            return super().Check(request, context)
        return health_pb2.HealthCheckResponse(status=_status(self._serving))


def _status(serving) -> int:
    return health_pb2.HealthCheckResponse.SERVING if serving.value else health_pb2.HealthCheckResponse.NOT_SERVING


def _exit_with_parent(parent: int, stop: threading.Event) -> None:
    while True:
        if os.getppid() != parent:  # the learner died, perhaps even before this process got going
            log.error("the learner is gone; this gRPC front stops")
            stop.set()
        if stop.wait(1.0):
            return


def serve_front(spec: FrontSpec, slots: list[Slot], events: Connection, serving, parent: int) -> None:
    """A front process: serve gRPC on the learner's port until SIGTERM or until the learner is gone."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)-7s %(message)s",
                        datefmt="%H:%M:%S")
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the learner stops its fronts
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_exit_with_parent, args=(parent, stop), daemon=True).start()
    torch.set_num_threads(1)
    if spec.config.keep_freed_memory:
        keep_freed_memory()
    config, link = spec.config, _LearnerLink(events)
    servicer = FrontServicer(spec, slots, serving, link)
    health_servicer = _FollowingHealth(serving)
    server, port = bound_server(config, servicer, health_servicer, link, servicer.run_spec.max_message_bytes,
                                spec.address, share_port=True)
    if not port:
        log.error("a gRPC front cannot listen on %s", spec.address)
        sys.exit(1)
    server.start()
    link.send("bound")
    status = None
    while not stop.is_set():  # the health service follows the learner's readiness
        now = _status(serving)
        if now != status:
            for name in ("", SERVICE_NAME):
                health_servicer.set(name, now)
            status = now
        stop.wait(0.2)
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=2.0).wait()
