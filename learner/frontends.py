"""gRPC served by several processes in front of the learner's model (`--frontends N`).

One Python process serving gRPC is held to about one core by the GIL, and under load most of a push's cost is
not the model's: receiving, parsing and checking the gradient, and encoding and sending the reply. With
`--frontends N`, N processes share the learner's port (SO_REUSEPORT: the kernel spreads connections among them).
Each front checks and decodes a push into a shared-memory buffer and encodes the reply; the learner's own process
only accounts for the push and applies it under its lock (`LearnerServicer.commit`, the same rules as when it
serves alone), then copies the new parameters into shared memory for the reply.

A front that dies is started again with fresh buffers (its last push may still be in the learner's hands); a
front whose learner is gone exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable, Iterator

import grpc
import torch
import torch.multiprocessing
from grpc_health.v1 import health, health_pb2

from a3c.codec import Layout
from a3c.config import LearnerConfig
from a3c.framing import ParamsEncoder, push_reply
from a3c.memory import keep_freed_memory
from a3c.wire import SERVICE_NAME
from learner.grpc_server import bound_server
from learner.metrics import LearnerMetrics
from learner.servicer import STARTING, GradientCheck, LearnerServicer, PushRefused, before, deadline_of
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("learner")


def reserve_port(listen: str) -> list[socket.socket]:
    """Sockets bound to every address of `listen` (port 0: a free port), which fronts can share but other
    programs cannot; they never listen, so they take no connections. Raises OSError when an address is taken or
    not local."""
    host, port = listen.rsplit(":", 1)
    reservations: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host.strip("[]") or None, int(port),
                                                                  type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            address = (address[0], int(port)) + tuple(address[2:])
            if int(port):  # a listener elsewhere on this port would share it with the fronts: refuse instead
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(address)
            reservation = socket.socket(family, kind, proto)
            reservations.append(reservation)
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as gRPC binds [::], both stacks; other v6 addresses alone
                reservation.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address[0] != "::"))
            reservation.bind(address)
            port = str(reservation.getsockname()[1])  # port 0: the others get the one the first was given
    except OSError:
        for reservation in reservations:
            reservation.close()
        raise
    return reservations


@dataclass(frozen=True)
class FrontSpec:
    """What a front process needs to serve: everything but the model."""

    config: LearnerConfig
    address: str
    run_spec: bytes
    layout: Layout
    wire_dtype: torch.dtype


@dataclass
class _Slot:
    """One call in flight between a front and the learner: its pipe end, two shared flat float32 buffers and two
    shared counters (plain shared memory, no locks: a process killed while touching them leaves no lock held)."""

    conn: Connection
    gradient: torch.Tensor  # written by the front, read by the learner while applying
    params: torch.Tensor    # written by the learner under its lock, read by the front for the reply
    call: ctypes.c_long       # the number of the front's call now using this slot
    cancelled: ctypes.c_long  # the number of the last call that ended (a cancel, or a caller gone)

    def still_wanted(self) -> bool:
        return self.cancelled.value != self.call.value


class _Front:
    def __init__(self, process: torch.multiprocessing.Process, slots: list[_Slot], events: Connection,
                 started: float) -> None:
        self.process, self.slots, self.events, self.started = process, slots, events, started
        self.bound = threading.Event()

    def close(self) -> None:
        for conn in [slot.conn for slot in self.slots] + [self.events]:
            conn.close()


class FrontendPool:
    """The learner's side: starts the fronts, answers their calls with the servicer, restarts the ones that die."""

    def __init__(self, spec: FrontSpec, count: int, servicer: LearnerServicer, metrics: LearnerMetrics) -> None:
        self.spec, self.count = spec, count
        self.servicer, self.model, self.metrics = servicer, servicer.model, metrics
        self._context = torch.multiprocessing.get_context("spawn")  # no gRPC or torch threads inherited
        # Read by the fronts on every call. A multiprocessing.Event takes a lock even to read, and a front killed
        # while holding it would stop all the others: a plain shared byte, written only here, instead.
        self._serving = self._context.RawValue(ctypes.c_bool, False)
        self._fronts: list[_Front] = []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="frontend-watcher", daemon=True)

    def set_serving(self, serving: bool) -> None:
        self._serving.value = serving

    def start(self) -> None:
        self._fronts = [self._spawn(index) for index in range(self.count)]

    def wait_bound(self, timeout: float) -> None:
        """Until every front listens, then watch them; OSError if one exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        for index, front in enumerate(self._fronts):
            while not front.bound.wait(0.1):
                if not front.process.is_alive() or time.monotonic() > deadline:
                    raise OSError(f"gRPC front {index} could not listen on {self.spec.address}")
        self._watcher.start()

    def stop(self, grace: float | None) -> None:
        """Stop the fronts; calls in flight get `grace` seconds to finish."""
        self.set_serving(False)
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        for front in self._fronts:
            if front.process.is_alive():
                front.process.terminate()  # SIGTERM: the front stops taking calls and finishes its own
        for front in self._fronts:
            front.process.join((grace or 0) + 5)
            if front.process.is_alive():
                front.process.kill()
                front.process.join()
            front.close()

    def _spawn(self, index: int) -> _Front:
        num_params = self.model.num_params
        here, there = [], []
        for _ in range(self.spec.config.workers):
            gradient, params = torch.empty(num_params).share_memory_(), torch.empty(num_params).share_memory_()
            call, cancelled = self._context.RawValue(ctypes.c_long, 0), self._context.RawValue(ctypes.c_long, -1)
            mine, theirs = self._context.Pipe()
            here.append(_Slot(mine, gradient, params, call, cancelled))
            there.append(_Slot(theirs, gradient, params, call, cancelled))
        events, events_end = self._context.Pipe(duplex=False)
        process = self._context.Process(target=serve_front, name=f"a3c-frontend-{index}", daemon=True,
                                        args=(self.spec, there, events_end, self._serving, os.getpid()))
        process.start()
        for slot in there:  # closed here, so that the learner's ends read EOF once the front is gone
            slot.conn.close()
        events_end.close()
        front = _Front(process, here, events, time.monotonic())
        for slot in here:
            threading.Thread(target=self._answer, args=(slot,), name=f"frontend-{index}", daemon=True).start()
        threading.Thread(target=self._drain, args=(front,), name=f"frontend-{index}-events", daemon=True).start()
        return front

    def _watch(self) -> None:
        """Start again a front that died: at once if it had run a while, else after a doubling pause (up to a
        minute), so a front that cannot start (its certificate gone, say) does not spin."""
        failures, retry_at = [0] * self.count, [0.0] * self.count
        while not self._stopping.wait(0.5):
            for index, front in enumerate(self._fronts):
                if front.process.is_alive() or self._stopping.is_set():
                    continue
                now = time.monotonic()
                if not retry_at[index]:
                    log.error("gRPC front %d exited with code %s; starting it again", index, front.process.exitcode)
                    failures[index] = failures[index] + 1 if now - front.started < 10 else 0
                    retry_at[index] = now + (min(60.0, 2.0 ** failures[index]) if failures[index] else 0)
                    front.close()
                if now < retry_at[index]:
                    continue
                try:
                    self._fronts[index] = self._spawn(index)
                except Exception:  # out of shared memory or file descriptors, say: try again later
                    log.exception("starting gRPC front %d again failed", index)
                    failures[index] += 1
                    retry_at[index] = now + min(60.0, 2.0 ** failures[index])
                    continue
                retry_at[index] = 0.0
                self.metrics.frontend_restarts.inc()

    def _drain(self, front: _Front) -> None:
        """Counts what the front reports: refusals it made itself and every RPC it finished."""
        while True:
            try:
                kind, *args = front.events.recv()
            except (EOFError, OSError):
                return
            if kind == "bound":
                front.bound.set()
            elif kind == "refused":
                self.metrics.refused(*args)
            elif kind == "rpc":
                self.metrics.rpc_done(*args)

    def _answer(self, slot: _Slot) -> None:
        def take_params() -> bool:
            slot.params.copy_(self.model.flat.detach())
            return True

        while True:
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                return
            try:
                reply = self._handle(message, slot, take_params)
            except Exception:  # a bug, not the caller's fault: the caller gets INTERNAL and the learner goes on
                log.exception("answering a gRPC front failed")
                reply = ("refused", "INTERNAL", "internal", "the learner failed to handle the call")
            try:
                slot.conn.send(reply)
            except OSError:
                return

    def _handle(self, message: tuple, slot: _Slot, take_params: Callable[[], bool]) -> tuple:
        kind = message[0]
        if kind == "push":
            _, summary, gradient_norm, deadline = message
            request = pb.PushGradientsRequest.FromString(summary)
            try:
                version, params = self.servicer.commit(
                    request, slot.gradient, gradient_norm,
                    lambda: slot.still_wanted() and before(deadline), take_params)
            except PushRefused as refused:
                self.servicer.refused(request, refused)
                return "refused", refused.code.name, refused.reason, str(refused)
            return "ok", version, params is not None
        if not self.servicer.ready.is_set():
            return "refused", "UNAVAILABLE", "shutting_down", STARTING
        version, params = self.servicer.params_unless(message[1], take_params)
        return "ok", version, params is not None


# --- the front process ---------------------------------------------------------------------------------------


class _LearnerLink:
    """A front's report of refusals and finished RPCs to the learner's metrics (RpcEvents), from any thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, *event: object) -> None:
        with self._lock:
            with contextlib.suppress(OSError):  # the learner is gone: this front is about to exit anyway
                self._conn.send(event)

    def refused(self, reason: str) -> None:
        self.send("refused", reason)

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self.send("rpc", method, code, seconds)


class FrontServicer(pb_grpc.LearnerServicer):
    """The Learner service in a front process: checks and decodes here, accounts and applies in the learner."""

    def __init__(self, spec: FrontSpec, slots: list[_Slot], serving, link: _LearnerLink) -> None:
        self.run_spec = pb.RunSpec.FromString(spec.run_spec)
        self.encode = ParamsEncoder(spec.layout, spec.wire_dtype)
        self.check = GradientCheck(spec.layout, self.run_spec.max_grad_norm)
        self.serving, self.link = serving, link
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)
        self._calls = itertools.count(1)

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[_Slot]:
        """A free slot for this call. If the call ends early (cancelled, the caller gone), the learner sees it
        under its lock and applies nothing, as when it serves alone; a later call in the slot is not affected."""
        slot, number = self._free.get(), next(self._calls)
        slot.call.value = number
        context.add_callback(lambda: setattr(slot.cancelled, "value", number))
        try:
            yield slot
        finally:
            self._free.put(slot)

    def _ask(self, slot: _Slot, context: grpc.ServicerContext, *message: object) -> tuple[int, bool]:
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

    def PushGradients(self, request: pb.PushGradientsRequest, context: grpc.ServicerContext) -> bytes:
        with self._slot(context) as slot:
            try:
                if not self.serving.value:
                    raise PushRefused(grpc.StatusCode.UNAVAILABLE, "shutting_down", STARTING)
                gradient_norm = self.check(request, slot.gradient)
            except PushRefused as refused:
                self.link.refused(refused.reason)
                context.abort(refused.code, f"{refused.reason}: {refused}")
            # Every field but the gradient, which the learner reads from the slot (a field added to the
            # contract travels too).
            summary = pb.PushGradientsRequest(**{field.name: value for field, value in request.ListFields()
                                                 if field.name != "gradients"})
            version, fresh = self._ask(slot, context, "push", summary.SerializeToString(), gradient_norm,
                                       deadline_of(context))
            return self.encode.push_reply(version, slot.params) if fresh else push_reply(version)


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


def serve_front(spec: FrontSpec, slots: list[_Slot], events: Connection, serving, parent: int) -> None:
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
