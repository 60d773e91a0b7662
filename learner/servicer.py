"""The Learner gRPC service: hands out the run spec and parameters, checks and applies pushed gradients.

A push is applied only when all of it is sound. Malformed gradients (wrong names, shapes or dtypes, NaN or
Inf, a norm above what actors clip to) and claims no honest actor can make (counts, episode returns and versions
a rollout cannot have: `GradientCheck.claims`) get INVALID_ARGUMENT, a base version from the future or older than
max_staleness gets FAILED_PRECONDITION, a replayed `(actor_id, seq)` gets ALREADY_EXISTS; in every refused case
the global parameters are untouched. OK means the gradient was applied. Until the learner has resumed from
its checkpoint every call gets UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import grpc
import torch
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from a3c import codec
from a3c.codec import Layout, split_views
from a3c.config import MAX_EVAL_EPISODES, MAX_NUM_ENVS
from a3c.wire import SERVICE_NAME
from a3c.framing import push_reply
from learner.global_model import GlobalModel
from learner.metrics import LearnerMetrics, RpcEvents
from learner.refusal_budget import RefusalBudget
from learner.stats import TrainingStats
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("learner")
# Actors clip to max_grad_norm; this much above it allows for 16-bit rounding on the wire, nothing more.
NORM_TOLERANCE = 1.01
T = TypeVar("T")
STARTING = "the learner is starting or stopping"


class PushRefused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class PushLimits:
    """What a push may claim: no honest actor reports more than these allow."""

    t_max: int                 # a rollout is t_max agent steps of each of an actor's environments
    frames_per_step: int       # emulator frames per agent step
    max_grad_norm: float       # actors clip to it
    max_episode_return: float  # |return| of one episode (inf: no bound known)

    @classmethod
    def of(cls, run_spec: pb.RunSpec, max_episode_return: float | None) -> PushLimits:
        return cls(run_spec.t_max, run_spec.frames_per_step, run_spec.max_grad_norm,
                   math.inf if max_episode_return is None else max_episode_return)


def _refuse(reason: str, message: str) -> PushRefused:
    return PushRefused(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


class GradientCheck:
    """Checks every field of a push that the learner's state does not decide (the rest is `commit`'s), decoding
    the gradient into a flat float32 buffer (layout order) on the way; refuses with PushRefused saying what is
    wrong. Holds no state, so gRPC front processes run it too."""

    def __init__(self, layout: Layout, limits: PushLimits) -> None:
        self.layout = list(layout)
        self.limits = limits
        self.max_norm = limits.max_grad_norm * NORM_TOLERANCE

    def claims(self, request: pb.PushGradientsRequest) -> None:
        """The push's claims other than the gradient: a rollout of t_max steps on 1 to MAX_NUM_ENVS environments
        with the run's frame skip, no more finished episodes than agent steps, returns within the environment's
        bound, finite loss statistics, a base version that can have existed."""
        limits = self.limits
        if not request.actor_id:
            raise _refuse("no_actor_id", "actor_id is empty")
        if request.base_version < 0:
            raise _refuse("bad_version", f"base version {request.base_version} never existed")
        steps = request.agent_steps
        if steps < limits.t_max or steps > limits.t_max * MAX_NUM_ENVS or steps % limits.t_max:
            raise _refuse("bad_counts", f"{steps} agent steps are not a rollout of {limits.t_max} steps on 1 to "
                                        f"{MAX_NUM_ENVS} environments")
        if request.env_frames != steps * limits.frames_per_step:
            raise _refuse("bad_counts", f"{request.env_frames} frames for {steps} agent steps (the run has "
                                        f"{limits.frames_per_step} frames per step)")
        returns = request.episode_returns
        if len(returns) > steps:
            raise _refuse("bad_returns", f"{len(returns)} episodes cannot end in {steps} agent steps")
        if not all(math.isfinite(r) for r in returns):
            raise _refuse("non_finite", "an episode return is not finite")
        if any(abs(r) > limits.max_episode_return for r in returns):
            raise _refuse("bad_returns", f"an episode return of {max(returns, key=abs):g} is beyond "
                                         f"{limits.max_episode_return:g} (--max-episode-return)")
        loss = request.loss
        if not all(math.isfinite(v) for v in (loss.policy_loss, loss.value_loss, loss.entropy, loss.grad_norm)):
            raise _refuse("non_finite", "a loss statistic is not finite")
        if loss.entropy < 0 or loss.grad_norm < 0:
            raise _refuse("bad_loss", "entropy and gradient norm cannot be negative")

    def __call__(self, request: pb.PushGradientsRequest, into: torch.Tensor) -> float:
        """Check the claims, decode the request's gradient into `into` (flat, float32) and return its global L2
        norm."""
        self.claims(request)
        try:
            total = math.sqrt(codec.decode_flat(request.gradients, self.layout, into))
        except codec.CodecError as err:
            raise _refuse(err.reason, str(err)) from None
        if not math.isfinite(total):  # NaN or Inf in some gradient, or a float32 overflow of a huge one
            for (name, _), grad in zip(self.layout, split_views(into, self.layout)):
                if not torch.isfinite(grad).all():
                    raise _refuse("non_finite", f"{name}: gradient has NaN or Inf")
        if total > self.max_norm:
            raise _refuse("huge_norm", f"gradient norm {total:.4g} exceeds the clip norm "
                                       f"{self.limits.max_grad_norm:g}")
        return total


def check_evaluation(report: pb.EvaluationReport, version_now: int, max_episode_return: float) -> None:
    """What an evaluation report may claim: a version that has existed, 1 to MAX_EVAL_EPISODES finite returns
    within the environment's bound, and either no video or a GIF."""
    if not report.evaluator_id:
        raise _refuse("no_evaluator_id", "evaluator_id is empty")
    if not 0 <= report.version <= version_now:
        raise _refuse("bad_version", f"version {report.version} is not one the learner has had (now {version_now})")
    returns = report.episode_returns
    if not 1 <= len(returns) <= MAX_EVAL_EPISODES:
        raise _refuse("bad_returns", f"{len(returns)} episodes: a report holds 1 to {MAX_EVAL_EPISODES}")
    if not all(math.isfinite(r) for r in returns):
        raise _refuse("non_finite", "an episode return is not finite")
    if any(abs(r) > max_episode_return for r in returns):
        raise _refuse("bad_returns", f"an episode return of {max(returns, key=abs):g} is beyond "
                                     f"{max_episode_return:g} (--max-episode-return)")
    if report.video_gif and not report.video_gif.startswith((b"GIF87a", b"GIF89a")):
        raise _refuse("bad_video", "video_gif is not a GIF")


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline on the monotonic clock (the same in every process of this machine); None: none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def count_if_abandoned(context: grpc.ServicerContext, abandoned: Callable[[], None]) -> Callable[[], None]:
    """Calls `abandoned()` if the call ends (cancelled, or out of time) before the returned function is called,
    which the handler calls once it has its answer."""
    answered = threading.Event()
    context.add_callback(lambda: None if answered.is_set() else abandoned())
    return answered.set


@contextlib.contextmanager
def held_and_counted(lock: threading.Lock, seconds: Counter) -> Iterator[None]:
    """Hold `lock`, adding the time it was held to `seconds`."""
    with lock:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds.inc(time.perf_counter() - start)


def in_time(deadline: float | None) -> bool:
    """Whether the deadline (from `deadline_of`) has not passed yet."""
    return deadline is None or time.monotonic() < deadline


class LearnerServicer(pb_grpc.LearnerServicer):
    def __init__(self, model: GlobalModel, stats: TrainingStats, run_spec: pb.RunSpec, limits: PushLimits,
                 metrics: LearnerMetrics, budget: RefusalBudget,
                 on_evaluation: Callable[[pb.EvaluationReport, dict], None] = lambda report, summary: None) -> None:
        self.model = model
        self.on_evaluation = on_evaluation  # with the report and its summary, once checked and recorded
        self.stats = stats
        self.run_spec = run_spec
        self.metrics = metrics
        self._last_seq: dict[str, int] = {}
        self.ready = threading.Event()  # set once resumed; cleared again when shutting down
        self.limits = limits
        self.check = GradientCheck(model.layout, limits)
        self.budget = budget
        metrics.actors_cooling_down.set_function(budget.cooling_count)

    def _require_ready(self, context: grpc.ServicerContext) -> None:
        if not self.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)

    def GetRunSpec(self, request: pb.GetRunSpecRequest, context: grpc.ServicerContext) -> pb.RunSpec:
        self._require_ready(context)
        return self.run_spec

    def GetParams(self, request: pb.GetParamsRequest, context: grpc.ServicerContext) -> pb.Params | bytes:
        self._require_ready(context)
        version, params = self.params_if_newer(request.have_version, self.model.params_message)
        return pb.Params(version=version) if params is None else params

    def params_if_newer(self, have_version: int, take: Callable[[], T]) -> tuple[int, T | None]:
        """The current version, and `take()` of the parameters (under the lock) unless the caller has them."""
        with self.model.lock:
            version = self.model.version
            return version, None if have_version == version else take()

    def PushGradients(self, request: pb.PushGradientsRequest, context: grpc.ServicerContext) -> bytes:
        answered = count_if_abandoned(context, self.metrics.push_abandoned)
        try:
            if not self.ready.is_set():
                raise PushRefused(grpc.StatusCode.UNAVAILABLE, "shutting_down", STARTING)
            self.refuse_if_cooling(request.actor_id)  # before any work on what it sent
            deadline = deadline_of(context)
            flat = torch.empty(self.model.num_params)  # each request its own: with --workers > 1 decodes overlap
            gradient_norm = self.check(request, flat)
            # gRPC may notice a deadline that passed while the push waited for the lock only later: both checks.
            version, reply = self.commit(request, flat, gradient_norm,
                                         lambda: context.is_active() and in_time(deadline), self.model.push_reply)
            return push_reply(version) if reply is None else reply
        except PushRefused as refused:
            self.refused(request, refused)
            context.abort(refused.code, f"{refused.reason}: {refused}")
        finally:
            answered()

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveResponse:
        self.actor_left(request.actor_id)
        return pb.LeaveResponse()

    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationReply:
        self._require_ready(context)
        try:
            self.record_evaluation(request)
        except PushRefused as refused:
            context.abort(refused.code, f"{refused.reason}: {refused}")
        return pb.EvaluationReply()

    def record_evaluation(self, report: pb.EvaluationReport) -> None:
        """A checked evaluation round into the progress records and `on_evaluation`; a report that is not sound
        raises PushRefused and changes nothing."""
        check_evaluation(report, self.model.version, self.limits.max_episode_return)
        summary = self.stats.record_evaluation(report.version, list(report.episode_returns))
        self.on_evaluation(report, summary)
        log.info("evaluation of version %d by %s: mean return %+.2f over %d episodes%s", report.version,
                 report.evaluator_id, summary["eval_mean_return"], summary["eval_episodes"],
                 f", a {len(report.video_gif) / 1e3:.0f} kB video" if report.video_gif else "")

    def actor_left(self, actor_id: str) -> None:
        self.stats.left(actor_id)
        log.info("%s left", actor_id)

    def refused(self, request: pb.PushGradientsRequest, refused: PushRefused) -> None:
        self.count_refusal(refused.reason, request.actor_id, refused.code == grpc.StatusCode.INVALID_ARGUMENT)
        log.debug("refused push from %s: %s", request.actor_id, refused)

    def count_refusal(self, reason: str, actor_id: str, invalid: bool) -> None:
        """A refused push, in the metrics and, when it was invalid (no honest actor sends one), against the
        actor's refusal budget."""
        self.metrics.refused(reason)
        if invalid and self.budget.refused(actor_id):
            log.warning("%s sent more than %d invalid pushes within a minute (the last: %s); its pushes are refused "
                        "for %g s", actor_id, self.budget.limit, reason, self.budget.cooldown)

    def refuse_if_cooling(self, actor_id: str) -> None:
        left = self.budget.cooling(actor_id)
        if left:
            raise PushRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, "cooling_down",
                              f"{actor_id} sent more than {self.budget.limit} invalid pushes within a minute; "
                              f"its pushes are refused for {left:.0f} s more")

    def commit(self, request: pb.PushGradientsRequest, gradient: torch.Tensor, gradient_norm: float,
               still_wanted: Callable[[], bool], take_params: Callable[[], T]) -> tuple[int, T | None]:
        """Apply a checked gradient (flat, layout order) unless the push is a replay, stale or from the future;
        returns the new version and, when the push asks for them, `take_params()` of the parameters at exactly
        that version. Raises PushRefused, leaving everything untouched. The request's gradients are not read."""
        self.refuse_if_cooling(request.actor_id)
        self.stats.heard_from(request.actor_id)
        self.metrics.pushes_waiting.inc()
        with held_and_counted(self.model.lock, self.metrics.busy_seconds):
            self.metrics.pushes_waiting.dec()
            # Checked again under the lock: shutdown clears `ready` under it before the final checkpoint, and
            # a caller whose deadline passed while waiting has dropped its rollout, so nothing may count it.
            if not self.ready.is_set():
                raise PushRefused(grpc.StatusCode.UNAVAILABLE, "shutting_down", "the learner is stopping")
            if not still_wanted():
                raise PushRefused(grpc.StatusCode.CANCELLED, "cancelled", "the caller gave up waiting")
            version = self.model.version
            if request.seq <= self._last_seq.get(request.actor_id, 0):
                raise PushRefused(grpc.StatusCode.ALREADY_EXISTS, "duplicate",
                                  f"push {request.seq} from {request.actor_id} was already received")
            if request.base_version > version:
                raise PushRefused(grpc.StatusCode.FAILED_PRECONDITION, "future_version",
                                  f"base version {request.base_version} is ahead of the learner's {version}")
            staleness = version - request.base_version
            if staleness > self.run_spec.max_staleness:
                raise PushRefused(grpc.StatusCode.FAILED_PRECONDITION, "stale",
                                  f"base version {request.base_version} is {staleness} updates old "
                                  f"(limit {self.run_spec.max_staleness})")
            self._last_seq[request.actor_id] = request.seq  # only once applied: a refused push changes nothing
            # Frames and episodes count with the gradient that carries them, so actors and learner agree.
            self.stats.record_rollout(request.env_frames, request.agent_steps, request.episode_returns)
            self.metrics.staleness.observe(staleness)
            with self.metrics.apply_seconds.time():
                new_version = self.model.apply(gradient)
            self.metrics.param_version.set(new_version)
            # Inside the lock, so no checkpoint or progress record sees the version without its update.
            loss = request.loss
            self.stats.record_update(loss.policy_loss, loss.value_loss, loss.entropy, loss.grad_norm, staleness)
            params = take_params() if request.want_params else None
        self.metrics.gradient_norm.observe(gradient_norm)
        return new_version, params


def _serialize(response: object) -> bytes:
    # Replies that carry parameters are assembled as bytes already (a3c/framing.py); the rest are messages.
    return response if isinstance(response, bytes) else response.SerializeToString()


def _parsing(name: str, message: type, handle: Callable, events: RpcEvents) -> Callable:
    """`handle` given the request parsed from its bytes: a request protobuf cannot parse gets INVALID_ARGUMENT
    (gRPC's own deserializer would answer INTERNAL), and a push so refused is counted as `malformed`."""
    def parse_and_handle(raw: bytes, context: grpc.ServicerContext):
        try:
            request = message.FromString(raw)
        except DecodeError:
            if name == "PushGradients":
                events.refused("malformed")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed: the bytes are not a {message.__name__}")
        return handle(request, context)

    return parse_and_handle


def add_to_server(servicer: pb_grpc.LearnerServicer, server: grpc.Server, events: RpcEvents) -> None:
    """Like the generated add_LearnerServicer_to_server, but requests are parsed by the handler and replies may
    be pre-serialized bytes."""
    requests = {"GetRunSpec": pb.GetRunSpecRequest, "GetParams": pb.GetParamsRequest,
                "PushGradients": pb.PushGradientsRequest, "Leave": pb.LeaveRequest,
                "ReportEvaluation": pb.EvaluationReport}
    handlers = {name: grpc.unary_unary_rpc_method_handler(_parsing(name, request, getattr(servicer, name), events),
                                                          response_serializer=_serialize)
                for name, request in requests.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
