"""gRPC served by several processes in front of the learner's model (`--frontends N`): the learner's side.

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

import ctypes
import logging
import os
import socket
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable

import torch
import torch.multiprocessing

from learner.front_process import FrontSpec, Slot, serve_front
from learner.metrics import LearnerMetrics
from learner.servicer import STARTING, LearnerServicer, PushRefused, in_time
from proto import a3c_pb2 as pb

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


class _Front:
    def __init__(self, process: torch.multiprocessing.Process, slots: list[Slot], events: Connection,
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
        learner_ends, front_ends = [], []  # the same slots, each with its own end of the slot's pipe
        for _ in range(self.spec.config.workers):
            gradient, params = torch.empty(num_params).share_memory_(), torch.empty(num_params).share_memory_()
            call, cancelled = self._context.RawValue(ctypes.c_long, 0), self._context.RawValue(ctypes.c_long, -1)
            learner_end, front_end = self._context.Pipe()
            learner_ends.append(Slot(learner_end, gradient, params, call, cancelled))
            front_ends.append(Slot(front_end, gradient, params, call, cancelled))
        events, events_end = self._context.Pipe(duplex=False)
        process = self._context.Process(target=serve_front, name=f"a3c-frontend-{index}", daemon=True,
                                        args=(self.spec, front_ends, events_end, self._serving, os.getpid()))
        process.start()
        for slot in front_ends:  # closed here, so that the learner's ends read EOF once the front is gone
            slot.conn.close()
        events_end.close()
        front = _Front(process, learner_ends, events, time.monotonic())
        for slot in learner_ends:
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
                self.servicer.count_refusal(*args)
            elif kind == "rpc":
                self.metrics.rpc_done(*args)
            elif kind == "abandoned":
                self.metrics.push_abandoned()
            elif kind == "left":
                self.servicer.actor_left(*args)

    def _answer(self, slot: Slot) -> None:
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

    def _handle(self, message: tuple, slot: Slot, take_params: Callable[[], bool]) -> tuple:
        kind = message[0]
        if kind == "push":
            _, summary, gradient_norm, deadline = message
            request = pb.PushGradientsRequest.FromString(summary)
            try:
                version, params = self.servicer.commit(
                    request, slot.gradient, gradient_norm,
                    lambda: slot.still_wanted() and in_time(deadline), take_params)
            except PushRefused as refused:
                self.servicer.refused(request, refused)
                return "refused", refused.code.name, refused.reason, str(refused)
            return "ok", version, params is not None
        if not self.servicer.ready.is_set():
            return "refused", "UNAVAILABLE", "shutting_down", STARTING
        if kind == "evaluation":
            try:
                self.servicer.record_evaluation(pb.EvaluationReport.FromString(message[1]))
            except PushRefused as refused:
                return "refused", refused.code.name, refused.reason, str(refused)
            return "ok", self.model.version, False
        version, params = self.servicer.params_if_newer(message[1], take_params)
        return "ok", version, params is not None
