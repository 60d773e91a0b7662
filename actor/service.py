"""The actor process: pull parameters, roll out, compute the gradient locally, push it, repeat."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import signal
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import grpc
import torch

from a3c import codec
from a3c.config import ActorConfig
from a3c.errors import UserFacingError
from a3c.framing import Push
from a3c.tokens import Tokens
from a3c.memory import keep_freed_memory
from a3c.metrics import new_registry, serve_metrics
from a3c.model import ModelSpec, build_model, parameter_layout
from a3c.reaching import worth_another_try
from a3c.ports import write_ports
from actor.client import LearnerClient
from actor.gradients import compute_gradients
from actor.metrics import ActorMetrics
from actor.rollout import VectorRollout
from proto import a3c_pb2 as pb

log = logging.getLogger("actor")

# Refusals that only mean "your parameters are out of date": drop the gradient, pull, go on.
_RESYNC = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)


@dataclass
class InFlightPush:
    reply: Callable[[], pb.PushGradientsResponse]  # waits for the learner's answer, or raises grpc.RpcError
    push: Push


class ActorError(UserFacingError):
    """The actor cannot go on; the message says why in one line."""


def actor_name(configured: str) -> str:
    """--actor-id, else host name and process id: distinct for every container replica and local process."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


def seed_from_name(name: str) -> int:
    """A stable seed per actor name, so that replicas started without --seed play different episodes. Below
    2**30, so that seed + env index stays a 32-bit int for the emulator."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") >> 2


class Actor:
    def __init__(self, config: ActorConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.metrics = ActorMetrics(new_registry())
        name = actor_name(config.actor_id)
        self.seed = config.seed if config.seed is not None else seed_from_name(name)
        self.seed_source = "--seed" if config.seed is not None else f"derived from the name {name}"
        # A fresh suffix per process, so a restarted actor never replays an earlier incarnation's sequence numbers.
        self.client = LearnerClient(config.learner, f"{name}/{secrets.token_hex(3)}", config.rpc_timeout,
                                    self.metrics, Tokens(config.auth_token, config.auth_token_file),
                                    config.tls_ca)
        self.seq = 0
        self.version = -1
        self.spec: pb.RunSpec | None = None
        self.model = None
        self.layout: list[tuple[str, tuple[int, ...]]] = []
        self.rollout: VectorRollout | None = None
        self.in_flight: InFlightPush | None = None
        self.held: Push | None = None  # the newest gradient made while the learner was away
        self._rejoining: Future | None = None
        self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rejoin")

    def _load(self, params: pb.Params) -> None:
        if not params.tensors:
            return
        tensors = codec.decode_all(params.tensors, self.layout)
        with torch.no_grad():
            for param, value in zip(self.model.parameters(), tensors):
                param.copy_(value)
        self.version = params.version

    def _setup(self) -> bool:
        """Connect (waiting for the learner), build what the run spec asks for, pull parameters."""
        spec = self.client.connect(self.config.connect_timeout, self.stop)
        if spec is None:
            return False
        self._joined(spec)
        self._load(self.client.get_params(self.version))
        return True

    def _joined(self, spec: pb.RunSpec) -> None:
        """Take a learner's run spec: build for it the first time; after that, check it is the same run."""
        if self.model is None:
            self.spec = spec
            torch.manual_seed(self.seed)  # the actions it samples, as the seed decides its environments
            self.model = build_model(ModelSpec.from_message(spec.model))
            precision = self.model.set_conv_precision(self.config.conv_precision)
            self.layout = parameter_layout(self.model)
            self.rollout = VectorRollout(spec.env_id, self.config.num_envs, spec.t_max, self.seed,
                                         self.config.env_backend)
            log.info("%s connected to %s: %s, %d envs, t_max %d, %s convolutions", self.client.actor_id,
                     self.config.learner, spec.env_id, self.config.num_envs, spec.t_max, precision)
        elif (spec.env_id, spec.model) != (self.spec.env_id, self.spec.model):
            raise ActorError(f"the learner at {self.config.learner} now trains {spec.env_id}, "
                             f"not {self.spec.env_id}; restart this actor")
        else:
            log.info("%s reconnected to %s", self.client.actor_id, self.config.learner)
            self.spec = spec  # a restarted learner may have changed its rollout settings
            self.rollout.t_max = spec.t_max
        self.version = -1
        self.in_flight = None  # a push on the old connection is lost, like the rollout it came from

    def _rejoin(self) -> bool:
        """The learner is away: roll out on the parameters at hand, holding only the newest gradient (an older
        one is dropped), while a helper thread waits for the learner (--connect-timeout); once it is back, send
        it the held gradient, which it applies or refuses as too stale like any other."""
        if self._rejoining is None:
            self._rejoining = self._waiter.submit(self.client.connect, self.config.connect_timeout, self.stop)
        if not self._rejoining.done():
            if self.held is not None:
                self.metrics.gradients_dropped.inc()
            self.held = self._next_push()
            return False
        spec, self._rejoining = self._rejoining.result(), None  # LearnerUnreachable, LearnerRefused: the actor ends
        if spec is None:
            return False
        base_version = self.version
        self._joined(spec)
        held, self.held = self.held, None
        if held is None:
            self._load(self.client.get_params(self.version))
        else:
            self.version = base_version  # what the held gradient was computed on, until the reply says more
            self.in_flight = InFlightPush(functools.partial(self.client.push, held), held)
            log.info("%s sent the gradient it held while the learner was away: %s", self.client.actor_id,
                     self._finish_push())
        return True

    def _next_push(self) -> Push:
        """One rollout on the parameters at hand and its gradient, ready to send."""
        spec = self.spec
        with self.metrics.rollout_seconds.time():
            rollout = self.rollout.collect(self.model)
        result = compute_gradients(self.model, rollout, spec.gamma, spec.entropy_coef, spec.value_coef,
                                   spec.max_grad_norm, spec.clip_rewards)
        self.seq += 1
        loss = pb.LossStats(policy_loss=result.policy_loss, value_loss=result.value_loss,
                            entropy=result.entropy, grad_norm=result.grad_norm)
        frames = rollout.agent_steps * spec.frames_per_step
        return Push(self.seq, self.version, list(zip((n for n, _ in self.layout), result.gradients)), frames,
                    rollout.agent_steps, rollout.episode_returns, loss)

    def step(self) -> None:
        """One rollout, one gradient, one push. With --overlap-pushes the push is answered during the next
        rollout, which then runs on the parameters from the push before it."""
        push = self._next_push()
        self._finish_push()  # at most one push in flight, so the learner sees each actor's pushes in order
        if self.config.overlap_pushes:  # answered while the next rollout runs
            self.in_flight = InFlightPush(self.client.start_push(push).result, push)
        else:  # a blocking call, which is cheaper than a future
            self.in_flight = InFlightPush(functools.partial(self.client.push, push), push)
            self._finish_push()

    def _finish_push(self) -> str | None:
        """Wait for the push in flight, count it, and load the parameters that came back with it; what became of
        it (None when none was in flight)."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return None
        push = in_flight.push
        try:
            reply = in_flight.reply()
        except grpc.RpcError as err:
            if err.code() not in _RESYNC:
                raise
            self.metrics.record_refused()
            self._load(self.client.get_params(-1))
            return f"refused as out of date ({err.code().name})"
        self.metrics.record_accepted(push.env_frames, push.episode_returns, lag=reply.version - 1 - push.base_version)
        self._load(reply.params)
        return "applied"

    def run(self) -> int:
        torch.set_num_threads(1)
        if self.config.keep_freed_memory:
            keep_freed_memory()
        metrics_server, metrics_port = serve_metrics(self.metrics.registry, self.config.metrics_port)
        log.info("%s serving metrics on :%d/metrics; seed %d (%s)", self.client.actor_id, metrics_port, self.seed,
                 self.seed_source)
        if self.config.port_file:
            write_ports(self.config.port_file, metrics=metrics_port)
        try:
            connected = False
            while not self.stop.is_set():
                try:
                    if not connected:
                        connected = self._setup() if self.model is None else self._rejoin()
                        continue
                    self.step()
                except grpc.RpcError as err:
                    if worth_another_try(err, self.client.tokens):
                        log.info("the learner refused this actor's token; presenting the next in its file")
                        connected = False
                        continue
                    # The push in flight is lost with the connection; rollouts go on while it reconnects.
                    log.warning("lost the learner (%s); rolling out while reconnecting", err.code().name)
                    connected = False
            self._settle_last_push()
            if connected:
                self.client.leave()
        finally:
            self.close()
            metrics_server.shutdown()
        log.info("%s stopped after %d accepted pushes (%d frames)", self.client.actor_id,
                 self.metrics.pushes_accepted, self.metrics.frames_counted)
        return 0

    def _settle_last_push(self) -> None:
        """On the way out, wait for the last push's answer so its frames are counted on both sides."""
        try:
            self._finish_push()
        except grpc.RpcError as err:
            log.warning("the last push got no answer (%s); its rollout is dropped", err.code().name)

    def close(self) -> None:
        self._waiter.shutdown(wait=True)  # a connect in progress sees `stop` within its 2 s attempt
        self.client.close()
        if self.rollout is not None:
            self.rollout.close()


def main(config: ActorConfig) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return Actor(config, stop).run()
