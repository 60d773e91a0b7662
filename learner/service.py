"""The learner process: builds the global model, serves gRPC, logs progress, checkpoints, stops cleanly."""

from __future__ import annotations

import copy
import json
import logging
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from a3c import checkpoints, codec
from a3c.config import LearnerConfig
from a3c.envs import describe_env, episode_return_bound
from a3c.errors import UserFacingError
from a3c.memory import keep_freed_memory
from a3c.metrics import new_registry, serve_metrics
from a3c.model import ModelSpec
from a3c.ports import write_ports
from a3c.wire import message_limit
from learner.global_model import GlobalModel
from learner.metrics import LearnerMetrics
from learner.optimizers import fused_step_available
from learner.refusal_budget import RefusalBudget
from learner.servicer import LearnerServicer, PushLimits
from learner.serving import serving_for
from learner.stats import TrainingStats, format_progress
from learner.tensorboard import TensorBoardLog
from proto import a3c_pb2 as pb

log = logging.getLogger("learner")


class LearnerError(UserFacingError):
    """The learner cannot start; the message says why in one line."""


def build_run_spec(config: LearnerConfig, spec: ModelSpec, frames_per_step: int, clip_rewards: bool,
                   num_params: int) -> pb.RunSpec:
    return pb.RunSpec(
        env_id=config.env,
        model=spec.to_message(),
        t_max=config.t_max, gamma=config.gamma, entropy_coef=config.entropy_coef, value_coef=config.value_coef,
        max_grad_norm=config.max_grad_norm, clip_rewards=clip_rewards, frames_per_step=frames_per_step,
        wire_dtype=codec.wire_dtype(config.wire_dtype), max_message_bytes=message_limit(num_params),
        max_staleness=config.max_staleness)


class LearnerService:
    def __init__(self, config: LearnerConfig) -> None:
        config.require_token_if_exposed()
        self.config = config
        torch.set_num_threads(1)
        if config.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(config.seed)
        info = describe_env(config.env)
        self.model_spec = ModelSpec.for_env(info, config.center_frames)
        self.model = GlobalModel(self.model_spec, config.optimizer, config.lr, config.rmsprop_alpha,
                                 config.optim_eps, codec.torch_dtype(config.wire_dtype))
        self.registry = new_registry()
        self.metrics = LearnerMetrics(self.registry)
        self.stats = TrainingStats(self.metrics)
        self.metrics.watch_actors(self.stats.active_actors)
        self.resumed_from: Path | None = None
        num_params = self.model.num_params
        self.run_spec = build_run_spec(config, self.model_spec, info.frames_per_step, info.clip_rewards, num_params)
        limits = PushLimits.of(self.run_spec, config.max_episode_return or episode_return_bound(config.env))
        self.tensorboard = TensorBoardLog(config.tensorboard) if config.tensorboard else None
        self.servicer = LearnerServicer(self.model, self.stats, self.run_spec, limits, self.metrics,
                                        RefusalBudget(config.refusal_limit, config.refusal_cooldown),
                                        on_evaluation=self._evaluated)
        self._last_checkpoint = time.monotonic()
        self._best_saved: float | None = None
        self.metrics_server = None
        self.serving = serving_for(config, self.servicer, self.metrics)
        self.port = self.serving.port

    def _evaluated(self, report: pb.EvaluationReport, summary: dict) -> None:
        if self.tensorboard is not None:
            self.tensorboard.evaluation(report, summary, self.stats.env_frames)

    # --- checkpoints -------------------------------------------------------------------------------

    def _checkpoint_state(self) -> dict:
        return {"format": checkpoints.FORMAT, "env": self.config.env, "model_spec": asdict(self.model_spec),
                "global": self.model.state(), "stats": self.stats.state(), "torch_rng": torch.get_rng_state()}

    def _snapshot(self) -> dict:
        """A copy of the whole state at one version: pushes go on changing the live tensors meanwhile."""
        with self.model.lock:
            return copy.deepcopy(self._checkpoint_state())

    def save_checkpoint(self) -> Path:
        snapshot = self._snapshot()
        path = checkpoints.save(self.config.checkpoint_dir, snapshot)
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoint_version.set(snapshot["global"]["version"])
        return path

    def _resume(self) -> Path | None:
        found = checkpoints.load_newest(self.config.checkpoint_dir)
        if found is None:
            return None
        state, path = found
        if state.get("format") != checkpoints.FORMAT:  # a later learner's layout: refuse rather than misread
            raise LearnerError(f"{path} is a checkpoint of format {state.get('format')}; this learner reads format "
                               f"{checkpoints.FORMAT} (use the a3c release that wrote it, or another --checkpoint-dir)")
        if state.get("env") != self.config.env:
            raise LearnerError(f"{path} holds a run of {state.get('env')!r}, not {self.config.env!r}; "
                               f"use another --checkpoint-dir")
        saved = ModelSpec.from_dict(state["model_spec"])
        if saved != self.model_spec:
            hint = ""
            if saved.center_frames != self.model_spec.center_frames:
                hint = f" (resume it with --{'' if saved.center_frames else 'no-'}center-frames)"
            raise LearnerError(f"{path} holds a different network{hint}; use another --checkpoint-dir")
        self.model.load_state(state["global"])
        self.stats.load_state(state["stats"])
        self._best_saved = self.stats.best_mean_return
        torch.set_rng_state(state["torch_rng"])
        return path

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve at once, reporting NOT_SERVING until resumed from the newest valid checkpoint."""
        self.metrics_server, self.metrics_port = serve_metrics(self.registry, self.config.metrics_port)
        self.serving.start()
        if not (self.config.auth_token or self.config.auth_token_file):
            log.warning("no --auth-token-file: any client that can reach port %d may push gradients", self.port)
        elif not self.config.tls_cert and self.config.exposed:
            log.warning("no --tls-cert: tokens and parameters cross the network in clear text")
        self.resumed_from = self._resume()
        self.metrics.param_version.set(self.model.version)
        self.servicer.ready.set()
        self.serving.open()
        if self.resumed_from:
            self.metrics.checkpoint_version.set(self.model.version)
            log.info("resumed from %s at version %d (%d frames)", self.resumed_from, self.model.version,
                     self.stats.env_frames)
        log.info("serving on %s (port %d%s), metrics on :%d/metrics: %s, %s model with %d parameters, "
                 "optimizer %s lr %g", self.config.listen, self.port,
                 self.serving.description, self.metrics_port,
                 self.config.env, self.model_spec.kind, self.model.num_params, self.config.optimizer, self.config.lr)
        if self.config.optimizer == "rmsprop" and not fused_step_available():
            log.info("learner/_rmsprop.c is not built (no C compiler when installed): the RMSProp step takes "
                     "torch's five passes, about 1 ms more per update")
        if not codec.fast_conversions_available():
            log.info("a3c/_wire.c is not built (no C compiler when installed): gradients and parameters are "
                     "converted by torch in several passes, about 1.5 ms more per update")
        if self.config.port_file:
            write_ports(self.config.port_file, grpc=self.port, metrics=self.metrics_port)

    def report(self) -> dict:
        with self.model.lock:
            record = self.stats.snapshot(self.model.version)
        log.info(format_progress(record))
        if self.tensorboard is not None:
            self.tensorboard.progress(record)
        if self.config.progress_file:
            try:
                with open(self.config.progress_file, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as err:  # training goes on; the log line above still has the record
                log.error("cannot append to %s: %s", self.config.progress_file, err.strerror)
        best = record["best_mean_return"]
        if best is not None and (self._best_saved is None or best > self._best_saved):
            # The network as of the first report after the 100-episode mean reached a new high.
            checkpoints.save(self.config.checkpoint_dir, self._snapshot(), name=checkpoints.BEST, previous=None)
            self._best_saved = best
        return record

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, reporting every log interval and checkpointing every interval."""
        interval = self.config.checkpoint_interval
        while not stop.wait(self.config.log_interval):
            self.report()
            if interval and time.monotonic() - self._last_checkpoint >= interval:
                self.save_checkpoint()

    def stop_serving(self, grace: float | None) -> None:
        """Stop taking calls; those in flight get `grace` seconds."""
        self.serving.stop(grace)

    def shutdown(self) -> None:
        """Stop taking pushes, let calls in flight finish, write the final record and checkpoint."""
        with self.model.lock:  # after this, no push can apply: the final checkpoint holds every update
            self.servicer.ready.clear()
        self.stop_serving(grace=2.0)
        try:
            self.report()
        finally:  # whatever happens to the last report, the final checkpoint is written
            path = self.save_checkpoint()
            self.metrics_server.shutdown()
            if self.tensorboard is not None:
                self.tensorboard.close()
        log.info("stopped at version %d; checkpoint %s", self.model.version, path)


def main(config: LearnerConfig) -> int:
    service = LearnerService(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service.start()
    except BaseException:
        service.stop_serving(grace=None)
        if service.metrics_server is not None:
            service.metrics_server.shutdown()
        raise
    try:
        service.run(stop)
    finally:
        service.shutdown()
    return 0
