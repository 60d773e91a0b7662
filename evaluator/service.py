"""The evaluator process: follow the learner's parameters, play rounds of greedy episodes on them, and report each
round as metrics, to the learner, as best-eval.pt (the best round's network) and, every so often, as a video."""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import grpc
import torch

from a3c import checkpoints, codec
from a3c.config import EvaluatorConfig
from a3c.envs import render_problem
from a3c.episodes import play_episode
from a3c.errors import UserFacingError
from a3c.files import replace_file
from a3c.metrics import new_registry, serve_metrics
from a3c.model import ModelSpec, build_model, parameter_layout
from a3c.ports import write_ports
from a3c.reaching import (TRANSIENT, TokenPresenter, channel_credentials, open_channel, wait_for_learner,
                          worth_another_try)
from a3c.tokens import Tokens
from a3c.video import STEP_MS, FrameSampler, gif_bytes
from a3c.wire import channel_options
from evaluator.metrics import EvaluatorMetrics
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc

log = logging.getLogger("eval")
VIDEO_FRAME_EVERY = 2  # agent steps per video frame: 7.5 frames/s of game time, a third of the bytes of every step
VIDEO_ROOM = 64 * 1024  # what a report needs beside its video


class EvaluatorError(UserFacingError):
    """The evaluator cannot go on; the message says why in one line."""


class Evaluator:
    def __init__(self, config: EvaluatorConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.metrics = EvaluatorMetrics(new_registry())
        self.name = config.evaluator_id or f"evaluator-{socket.gethostname()}-{os.getpid()}"
        self.tokens = TokenPresenter(Tokens(config.auth_token, config.auth_token_file))
        self._credentials = channel_credentials(config.tls_ca)
        self.output_dir = Path(config.output_dir)
        self.videos_dir = self.output_dir / "videos"
        self.spec: pb.RunSpec | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.LearnerStub | None = None
        self.model = None
        self.layout: list[tuple[str, tuple[int, ...]]] = []
        self.version = -1  # of the parameters at hand
        self.evaluated = -1  # the version the last round played
        self.next_seed = config.seed
        self.best: float | None = None
        self.rounds_played = 0
        self._next_video = 0.0  # monotonic time the next video is due (the first round records one)
        self.videos = config.video_interval > 0

    # --- the learner ----------------------------------------------------------------------------------

    def _connect(self) -> bool:
        """Wait for the learner (--connect-timeout), take its run spec, open a channel sized for it."""
        with open_channel(self.config.learner, self._credentials) as bootstrap:
            stub = pb_grpc.LearnerStub(bootstrap)
            spec = wait_for_learner(
                lambda seconds: stub.GetRunSpec(pb.GetRunSpecRequest(actor_id=self.name), timeout=seconds,
                                                metadata=self.tokens.metadata(), wait_for_ready=True),
                self.config.learner, self.config.connect_timeout, self.stop, self.tokens.refused)
        if spec is None:
            return False
        if self.spec is not None and (spec.env_id, spec.model) != (self.spec.env_id, self.spec.model):
            raise EvaluatorError(f"the learner at {self.config.learner} now trains {spec.env_id}, not "
                                 f"{self.spec.env_id}; restart this evaluator")
        self._close_channel()
        self._channel = open_channel(self.config.learner, self._credentials, channel_options(spec.max_message_bytes))
        self._stub = pb_grpc.LearnerStub(self._channel)
        if self.spec is None:
            self.spec = spec
            self.model = build_model(ModelSpec.from_message(spec.model))
            self.model.set_conv_precision("float32")  # greedy actions exactly as the torch checkpoint plays them
            self.model.eval()
            self.layout = parameter_layout(self.model)
            self.best = self._best_so_far()
            if self.config.video_interval and (problem := render_problem(spec.env_id)):
                self.videos = False
                log.warning("no videos: %s cannot render here (%s)", spec.env_id, problem)
            log.info("%s evaluating %s on %s: %d greedy episodes per round, a round at most every %g s",
                     self.name, spec.env_id, self.config.learner, self.config.episodes, self.config.interval)
        else:
            log.info("%s reconnected to %s", self.name, self.config.learner)
        self.version = self.evaluated = -1  # a restarted learner may have resumed from an older version
        return True

    def _call(self, method, request):
        reply = method(request, timeout=self.config.rpc_timeout, metadata=self.tokens.metadata())
        self.tokens.answered()
        return reply

    def _pull(self) -> None:
        """The learner's parameters, fetched only when its version moved."""
        params = self._call(self._stub.GetParams, pb.GetParamsRequest(actor_id=self.name, have_version=self.version))
        if params.tensors:
            tensors = codec.decode_all(params.tensors, self.layout)
            with torch.no_grad():
                for param, value in zip(self.model.parameters(), tensors):
                    param.copy_(value)
            self.version = params.version

    def _report(self, returns: list[float], video: bytes) -> None:
        report = pb.EvaluationReport(evaluator_id=self.name, version=self.version, episode_returns=returns,
                                     video_gif=video)
        try:
            self._call(self._stub.ReportEvaluation, report)
        except grpc.RpcError as err:
            if err.code() in TRANSIENT or err.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.metrics.rounds.labels("undelivered").inc()
                raise
            self.metrics.rounds.labels("refused").inc()  # a bug or an older learner; the round still counts here
            log.warning("the learner refused the evaluation report: %s: %s", err.code().name, err.details())
            return
        self.metrics.rounds.labels("accepted").inc()

    # --- a round --------------------------------------------------------------------------------------

    def _round(self) -> None:
        """`--episodes` greedy episodes on the parameters at hand; the first recorded when a video is due."""
        started = time.monotonic()
        sampler = None
        if self.videos and started >= self._next_video:
            sampler = FrameSampler(VIDEO_FRAME_EVERY, limit=-(-self.config.video_steps // VIDEO_FRAME_EVERY))
        returns = []
        for index in range(self.config.episodes):
            recording = sampler is not None and index == 0
            returns.append(play_episode(self.spec.env_id, self.model, greedy=True, seed=self.next_seed,
                                        on_frame=sampler if recording else None,
                                        render_mode="rgb_array" if recording else None, stop=self.stop))
            self.next_seed += 1
            if self.stop.is_set():
                return  # a round cut short is no measure of the network
        self.metrics.round_seconds.observe(time.monotonic() - started)
        self.evaluated = self.version
        self.rounds_played += 1
        mean = sum(returns) / len(returns)
        if self.best is None or mean > self.best:
            self.best = mean
            self._save_best(returns)
        self.metrics.round(self.version, returns, self.best)
        video = self._save_video(sampler.frames) if sampler is not None and sampler.frames else b""
        log.info("version %d: mean return %+.2f (min %+.0f, max %+.0f) over %d greedy episodes in %.1f s%s",
                 self.version, mean, min(returns), max(returns), len(returns), time.monotonic() - started,
                 "; a new best" if self.best == mean else "")
        self._report(returns, video)

    def _save_best(self, returns: list[float]) -> None:
        """The network of the best round so far, as a checkpoint `a3c evaluate` and `a3c play` read."""
        state = {"format": checkpoints.FORMAT, "env": self.spec.env_id,
                 "model_spec": asdict(ModelSpec.from_message(self.spec.model)),
                 "global": {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                            "version": self.version},
                 "stats": {}, "evaluation": {"mean": sum(returns) / len(returns), "min": min(returns),
                                             "max": max(returns), "episodes": len(returns)}}
        checkpoints.save(self.output_dir, state, name=checkpoints.BEST_EVAL, previous=None)

    def _best_so_far(self) -> float | None:
        """The round mean in an earlier best-eval.pt of this run, so that a restart never replaces it with worse."""
        path = self.output_dir / checkpoints.BEST_EVAL
        try:
            state = checkpoints.load(path)
        except FileNotFoundError:
            return None
        except Exception as err:  # torn or foreign: the next round writes a good one
            log.warning("%s does not load (%s); it will be replaced", path, type(err).__name__)
            return None
        if state.get("env") != self.spec.env_id:
            raise EvaluatorError(f"{path} holds a network for {state.get('env')!r}, not {self.spec.env_id!r}; "
                                 f"use another --output-dir")
        return float(state["evaluation"]["mean"])

    def _save_video(self, frames: list) -> bytes:
        """The frames as a GIF small enough to report (shrunk until it fits), kept in OUTPUT_DIR/videos with the
        newest --videos-kept."""
        self._next_video = time.monotonic() + self.config.video_interval
        room = self.spec.max_message_bytes - VIDEO_ROOM
        scale, gif = 1.0, gif_bytes(frames, STEP_MS * VIDEO_FRAME_EVERY)
        while len(gif) > room and scale > 0.1:
            scale /= 2
            gif = gif_bytes(frames, STEP_MS * VIDEO_FRAME_EVERY, scale)
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        replace_file(self.videos_dir / f"version-{self.version:09d}.gif", gif)
        for old in sorted(self.videos_dir.glob("version-*.gif"))[:-self.config.videos_kept]:
            old.unlink(missing_ok=True)
        self.metrics.videos.inc()
        return gif if len(gif) <= room else b""

    # --- running --------------------------------------------------------------------------------------

    def run(self) -> int:
        torch.set_num_threads(1)
        os.nice(self.config.nice)  # the actors on this machine go first: evaluation can wait, training should not
        metrics_server, metrics_port = serve_metrics(self.metrics.registry, self.config.metrics_port)
        log.info("%s serving metrics on :%d/metrics", self.name, metrics_port)
        if self.config.port_file:
            write_ports(self.config.port_file, metrics=metrics_port)
        try:
            connected = False
            next_round = 0.0
            while not self.stop.is_set():
                try:
                    if not connected:
                        connected = self._connect()
                        continue
                    if self.stop.wait(max(next_round - time.monotonic(), 0)):
                        break
                    self._pull()
                    if self.version == self.evaluated:  # nothing new to play: look again shortly
                        next_round = time.monotonic() + min(self.config.interval, 1.0)
                        continue
                    next_round = time.monotonic() + self.config.interval
                    self._round()
                except grpc.RpcError as err:
                    if worth_another_try(err, self.tokens):
                        continue
                    log.warning("lost the learner (%s); reconnecting", err.code().name)
                    connected = False
        finally:
            self._close_channel()
            metrics_server.shutdown()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        log.info("%s stopped after %d rounds (%.1f s of CPU); best round mean %s", self.name, self.rounds_played,
                 cpu.ru_utime + cpu.ru_stime, "none" if self.best is None else f"{self.best:+.2f}")
        return 0

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def main(config: EvaluatorConfig) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return Evaluator(config, stop).run()
