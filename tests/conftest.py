import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import torch

from a3c import codec
from a3c.config import LearnerConfig
from a3c.wire import channel_options
from learner.metrics import REJECT_REASONS
from learner.service import LearnerService
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.processes import ROOT, wait_for


@contextlib.contextmanager
def serving_learner(directory: Path, **overrides) -> Iterator[LearnerService]:
    """A real learner service on 127.0.0.1:0 (CartPole and checkpoints in `directory` unless told otherwise),
    stopped on the way out, also when start() refuses a checkpoint."""
    settings = dict(env="CartPole-v1", listen="127.0.0.1:0", checkpoint_dir=str(directory), log_interval=60.0,
                    metrics_port=0)
    service = LearnerService(LearnerConfig(**{**settings, **overrides}))
    try:
        service.start()
        yield service
    finally:
        service.stop_serving(grace=None)
        if service.metrics_server is not None:
            service.metrics_server.shutdown()


@pytest.fixture
def start_learner(tmp_path):
    """Start real learner services (see serving_learner); stopped after the test."""
    with contextlib.ExitStack() as services:
        yield lambda **overrides: services.enter_context(serving_learner(tmp_path / "checkpoints", **overrides))


def counters(learner: LearnerService) -> dict:
    """What the learner has counted: frames, steps, updates, episodes, the return window, the best mean."""
    return {key: value for key, value in learner.stats.state().items() if key != "seconds"}


@pytest.fixture
def learner(start_learner) -> LearnerService:
    return start_learner()


@pytest.fixture
def stub(learner):
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}",
                               options=channel_options(learner.run_spec.max_message_bytes)) as channel:
        yield pb_grpc.LearnerStub(channel)


def rollout_counts(learner: LearnerService, envs: int = 1) -> dict[str, int]:
    """The frame and step counts of one honest rollout of the learner's run on `envs` environments."""
    steps = learner.run_spec.t_max * envs
    return {"agent_steps": steps, "env_frames": steps * learner.run_spec.frames_per_step}


def zero_gradients(learner: LearnerService, **replace: torch.Tensor) -> list[pb.Tensor]:
    """A gradient of zeros for the learner's network, as messages, with some tensors replaced."""
    grads = {name: torch.zeros(shape) for name, shape in learner.model.layout}
    grads.update(replace)
    return codec.encode_all(grads.items())


def sound_push(learner: LearnerService, **fields) -> pb.PushGradientsRequest:
    """A sound push of zero gradients (one rollout on one environment), with `fields` replaced."""
    return pb.PushGradientsRequest(**{"actor_id": "a", "seq": 1, "base_version": 0,
                                      "gradients": zero_gradients(learner), **rollout_counts(learner), **fields})


def rejections(learner: LearnerService) -> dict[str, float]:
    """The learner's refused pushes by reason, as its metrics report them (only the non-zero ones)."""
    counts = {reason: learner.registry.get_sample_value("a3c_learner_gradients_rejected_total", {"reason": reason})
              for reason in REJECT_REASONS}
    return {reason: count for reason, count in counts.items() if count}


def expect_rejections(learner: LearnerService, expected: dict[str, float]) -> None:
    """Until the learner's refusal counts are `expected`: front processes report theirs through a pipe, so with
    --frontends they arrive a moment after the caller's error."""
    wait_for(lambda: rejections(learner) == expected, 10, f"the refusals {expected}")


def run_a3c(*args: str, timeout: float = 120, env: dict | None = None, cwd=None):
    """Run the real `a3c` command in a fresh process."""
    return subprocess.run([sys.executable, "-m", "apps", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)
