"""The evaluator service and the learner's side of it: reports checked before anything records them, rounds
only on new parameters, best-eval.pt, videos, and the TensorBoard event files they end up in."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import threading

import grpc
import pytest
from PIL import Image, ImageSequence
from prometheus_client import generate_latest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from a3c.config import EvaluatorConfig
from a3c.wire import channel_options
from apps import playing
from evaluator.service import Evaluator
from learner.stats import EVALUATION_KEYS
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import serving_learner, sound_push
from tests.processes import tool, wait_for

GIF = Image.new("RGB", (4, 3))


def gif() -> bytes:
    out = io.BytesIO()
    GIF.save(out, format="GIF")
    return out.getvalue()


@pytest.fixture(scope="module", params=[0, 2], ids=["served-alone", "2-frontends"])
def learner(request, tmp_path_factory):
    with serving_learner(tmp_path_factory.mktemp("reports"), frontends=request.param) as service:
        yield service


@pytest.fixture(scope="module")
def stub(learner):
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}",
                               options=channel_options(learner.run_spec.max_message_bytes)) as channel:
        yield pb_grpc.LearnerStub(channel)


@pytest.mark.parametrize("report, reason", [
    (dict(evaluator_id=""), "no_evaluator_id"),
    (dict(version=1), "bad_version"),  # the learner is still at version 0
    (dict(version=-1), "bad_version"),
    (dict(episode_returns=[]), "bad_returns"),
    (dict(episode_returns=[1.0] * 1001), "bad_returns"),
    (dict(episode_returns=[1.0, math.nan]), "non_finite"),
    (dict(episode_returns=[501.0]), "bad_returns"),  # CartPole-v1 ends after 500 steps of reward 1
    (dict(video_gif=b"\x89PNG\r\n\x1a\n"), "bad_video"),
])
def test_a_report_that_is_not_sound_is_refused_and_changes_nothing(learner, stub, report, reason):
    sound = dict(evaluator_id="e", version=0, episode_returns=[10.0, 20.0], video_gif=gif())
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReportEvaluation(pb.EvaluationReport(**{**sound, **report}), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in refused.value.details()
    assert learner.stats.evaluation == dict.fromkeys(EVALUATION_KEYS)
    assert learner.report()["eval_mean_return"] is None


def test_a_sound_report_reaches_the_progress_records(learner, stub):
    stub.ReportEvaluation(pb.EvaluationReport(evaluator_id="e", version=0, episode_returns=[10.0, 30.0, 20.0],
                                              video_gif=gif()), timeout=10)
    record = learner.report()
    assert (record["eval_mean_return"], record["eval_min_return"], record["eval_max_return"],
            record["eval_episodes"], record["eval_version"]) == (20.0, 10.0, 30.0, 3, 0)


@contextlib.contextmanager
def running(evaluator: Evaluator):
    thread = threading.Thread(target=evaluator.run)
    thread.start()
    try:
        yield evaluator
    finally:
        evaluator.stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the evaluator did not stop"


def sample(evaluator: Evaluator, name: str, labels: dict | None = None) -> float:
    return evaluator.metrics.registry.get_sample_value(name, labels or {})


def evaluator_for(learner, tmp_path, **overrides) -> Evaluator:
    settings = dict(learner=f"127.0.0.1:{learner.port}", interval=0.0, episodes=3, metrics_port=0, nice=0,
                    output_dir=str(tmp_path / "evaluation"), evaluator_id="e")
    return Evaluator(EvaluatorConfig(**{**settings, **overrides}))


def test_the_evaluator_plays_each_new_version_once_and_keeps_the_best(tmp_path):
    with serving_learner(tmp_path / "checkpoints") as learner, running(evaluator_for(learner, tmp_path)) as evaluator:
        def rounds() -> float:
            return sample(evaluator, "a3c_eval_rounds_total", {"report": "accepted"})

        wait_for(lambda: rounds() == 1, 30, "the first round")
        with grpc.insecure_channel(f"127.0.0.1:{learner.port}",
                                   options=channel_options(learner.run_spec.max_message_bytes)) as channel:
            stub = pb_grpc.LearnerStub(channel)
            for version in (1, 2):  # each push moves the version by one
                stub.PushGradients(sound_push(learner, seq=version, base_version=version - 1), timeout=10)
                wait_for(lambda: sample(evaluator, "a3c_eval_version") == version, 30, f"version {version} played")
                # With --interval 0 an evaluator that replayed unchanged versions would be far past this.
                wait_for(lambda: rounds() == 1 + version, 30, "one round per version")
        assert sample(evaluator, "a3c_eval_episodes_total") == 9
        low, mean, high = (sample(evaluator, f"a3c_eval_{k}_return") for k in ("min", "mean", "max"))
        assert low <= mean <= high
        assert learner.stats.evaluation["eval_version"] == 2 and learner.stats.evaluation["eval_episodes"] == 3
        assert learner.stats.evaluation["eval_mean_return"] == pytest.approx(mean, abs=1e-3)
        best = playing.load_policy(tmp_path / "evaluation")  # the directory's best-eval.pt
        assert best.env_id == "CartPole-v1" and best.version in (0, 1, 2)
        assert sample(evaluator, "a3c_eval_best_mean_return") >= mean
        exposition = generate_latest(evaluator.metrics.registry).decode()
        checked = subprocess.run([tool("promtool"), "check", "metrics"], input=exposition, capture_output=True,
                                 text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_the_evaluator_records_pong_into_the_learners_tensorboard(tmp_path):
    with serving_learner(tmp_path / "checkpoints", env="PongNoFrameskip-v4",
                         tensorboard=str(tmp_path / "tensorboard")) as learner:
        with running(evaluator_for(learner, tmp_path, episodes=1, video_steps=40)) as evaluator:
            wait_for(lambda: sample(evaluator, "a3c_eval_rounds_total", {"report": "accepted"}) == 1, 120,
                     "a round of Pong")
        learner.tensorboard.close()
    videos = sorted((tmp_path / "evaluation" / "videos").glob("*.gif"))
    assert [v.name for v in videos] == ["version-000000000.gif"]
    # 40 agent steps, one frame in two, 133 ms each (a GIF counts hundredths: 130); repeated frames are merged.
    with Image.open(videos[0]) as video:
        assert video.size == (160, 210) and sum(frame.info["duration"] for frame in ImageSequence.Iterator(video)) \
            == 20 * 130
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"eval/mean_return", "eval/min_return", "eval/max_return", "eval/version"} <= set(events.Tags()["scalars"])
    (image,) = events.Images("eval/video")
    assert image.encoded_image_string == videos[0].read_bytes()
    assert (image.width, image.height) == (160, 210)
    (mean,) = events.Scalars("eval/mean_return")
    assert -21 <= mean.value <= 21 and mean.value == sample(evaluator, "a3c_eval_mean_return")
