"""docker-compose.yml run as the README says, under a real engine: one stack, taken through a user's day in order
(up with 8 actors, scale, stop and start the learner, kill it, down and up, down -v). Pong, as shipped."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
import urllib.request
from urllib.parse import urlencode

import pytest

from tests.containers.engine import REPORT, HealthWatch, Stack
from tests.dashboard import panel_expressions
from tests.processes import wait_for

pytestmark = pytest.mark.containers

SERVICES = ("learner", "actor", "evaluator", "tensorboard", "prometheus")  # and grafana, whose image cannot be had here
TENSORBOARD = "127.0.0.1:6006"  # where the compose file publishes it


@pytest.fixture(scope="module")
def stack(engine, image):
    stack = Stack(engine, f"a3ctest{os.getpid()}")
    stack.volumes_before = {v.name for v in engine.volumes.list()}
    stack.watch = HealthWatch(stack)
    yield stack
    stack.watch.close()
    stack.compose("down", "--volumes", "--timeout", "60")


def up(stack: Stack, *scale: str) -> None:
    stack.compose("up", "--detach", "--no-build", *scale, *SERVICES)


def wait_healthy(stack: Stack, containers, timeout: float = 180) -> float:
    """Wait until every container's health check passes; the time it did."""
    wait_for(lambda: all(stack.health(c) == "healthy" for c in containers), timeout,
             f"{', '.join(c.name for c in containers)} to be healthy")
    return time.time()


def version(stack: Stack) -> float:
    return stack.learner_metric("a3c_learner_param_version")


def wait_actors_scraped(stack: Stack, actors) -> None:
    """Prometheus's DNS discovery lists exactly these actors, up, and the learner."""
    def scraped() -> bool:
        found = {t["labels"]["instance"].rsplit(":", 1)[0] for t in stack.prometheus_targets("actor")}
        return found == {stack.ip(a) for a in actors} and len(stack.prometheus_targets("learner")) == 1
    wait_for(scraped, 120, f"Prometheus to scrape the learner and {len(actors)} actors")


def wait_every_actor_pushes(stack: Stack, actors, after: dict[str, float] | None = None) -> None:
    after = after or {}
    wait_for(lambda: all(stack.accepted_pushes(a) > after.get(a.id, 0) for a in actors), 240,
             "a new accepted push from every actor")


def incarnations(actors) -> dict[str, tuple[str, int]]:
    for actor in actors:
        actor.reload()
    return {a.id: (a.attrs["State"]["StartedAt"], a.attrs["RestartCount"]) for a in actors}


def frames_per_second(stack: Stack, seconds: float = 30) -> float:
    start, frames = time.monotonic(), stack.learner_metric("a3c_learner_env_frames_total")
    time.sleep(seconds)  # a measurement window, not a synchronisation
    return (stack.learner_metric("a3c_learner_env_frames_total") - frames) / (time.monotonic() - start)


def test_up_with_eight_actors_all_push_are_scraped_and_stay_healthy(stack):
    up(stack, "--scale", "actor=8")
    learner, actors = stack.learner(), stack.containers("actor")
    assert len(actors) == 8
    wait_every_actor_pushes(stack, actors)
    wait_for(lambda: stack.learner_metric("a3c_learner_actors_active") == 8, 60, "the learner to count 8 actors")
    wait_actors_scraped(stack, actors)
    # The evaluation row waits for the evaluator's first round (test_the_evaluator_...), which 8 actors on few
    # cores put off: it runs at niceness 10.
    wait_for(lambda: not [title for title, expr in panel_expressions()
                          if not title.startswith("Evaluat") and not stack.prometheus_query(expr)], 120,
             "every training dashboard expression to return data")
    healthy = wait_healthy(stack, [learner, *actors])
    assert "is not built" not in stack.logs(learner)  # the C loops are in the image and used
    REPORT["8 actors"] = f"{frames_per_second(stack):,.0f} frames/s"
    for service, seconds in stack.watch.seconds.items():
        REPORT[f"{service} health checks"] = (f"{len(seconds)} with up to 8 actors, median "
                                              f"{statistics.median(seconds):.2f} s, longest {max(seconds):.2f} s")
    # Start-up checks may fail (the learner answers NOT_SERVING until it has resumed); none after a first pass.
    assert not stack.watch.failures_after_first_pass(), stack.watch.failures_after_first_pass()
    assert not stack.watch.failures_since(healthy)


def exec_ok(container, *argv: str) -> bool:
    return container.exec_run(list(argv)).exit_code == 0


UNAUTHENTICATED_CALL = """
import grpc, sys
from proto import a3c_pb2, a3c_pb2_grpc
credentials = grpc.ssl_channel_credentials(open("/credentials/actor/ca.crt", "rb").read())
with grpc.secure_channel("learner:50051", credentials) as channel:
    try:
        a3c_pb2_grpc.LearnerStub(channel).GetRunSpec(a3c_pb2.GetRunSpecRequest(actor_id="intruder"), timeout=10)
        print("OK")
    except grpc.RpcError as err:
        print(err.code().name)
"""


def test_the_stack_runs_with_tls_and_a_token_of_its_own_and_actors_never_hold_the_learners_key(stack):
    learner, actor = stack.learner(), stack.containers("actor")[0]
    log = stack.logs(learner)
    assert "no --auth-token-file" not in log and "clear text" not in log
    assert stack.containers("credentials", all=True)[0].attrs["State"]["ExitCode"] == 0
    # A client on the stack's network that trusts the CA but has no token is turned away; plaintext never connects.
    assert actor.exec_run(["python", "-c", UNAUTHENTICATED_CALL]).output.decode().strip() == "UNAUTHENTICATED"
    assert exec_ok(actor, "a3c", "health", "--grpc", "learner:50051", "--tls-ca", "/credentials/actor/ca.crt")
    assert not exec_ok(actor, "a3c", "health", "--grpc", "learner:50051", "--timeout", "3")
    listing = actor.exec_run(["sh", "-c", "ls -A /credentials/*"]).output.decode().split()
    assert sorted(name for name in listing if not name.endswith(":")) == ["ca.crt", "tokens"]
    assert exec_ok(learner, "test", "-s", "/credentials/learner/tls.key")


def test_the_token_rotates_while_training_and_nobody_restarts(stack):
    actors = stack.containers("actor")
    started = incarnations([stack.learner(), *actors])
    old = stack.learner().exec_run(["cat", "/credentials/learner/tokens"]).output.decode().split()
    for step, accepted in (("--rotate-token", 2), ("--retire-old-tokens", 1)):
        pushes = {a.id: stack.accepted_pushes(a) for a in actors}
        stack.compose("run", "--rm", "credentials", "credentials", "/credentials", step)
        wait_for(lambda: f"reread: {accepted} token(s) in force" in stack.logs(stack.learner()), 30,
                 f"the learner to reread its tokens after {step}")
        wait_every_actor_pushes(stack, actors, after=pushes)
    new = stack.learner().exec_run(["cat", "/credentials/learner/tokens"]).output.decode().split()
    assert len(old) == len(new) == 1 and old != new
    assert stack.metric(stack.learner(), 9400, "a3c_learner_gradients_rejected_total",
                        {"reason": "unauthenticated"}) == 0
    assert not [a.name for a in actors if "UNAUTHENTICATED" in stack.logs(a)]
    assert incarnations([stack.learner(), *actors]) == started


def test_every_service_runs_on_a_read_only_root_filesystem(stack):
    for container in (stack.learner(), stack.containers("actor")[0], *stack.containers("evaluator"),
                      *stack.containers("tensorboard")):
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        result = container.exec_run(["touch", "/opt/venv/written"])
        assert result.exit_code != 0 and b"Read-only file system" in result.output
        assert container.exec_run(["touch", "/tmp/written"]).exit_code == 0


def test_replicas_without_a_seed_each_derive_their_own(stack):
    seeds = {}
    for actor in stack.containers("actor"):
        found = re.search(r"seed (\d+) \(derived from the name ([\w.-]+)\)", stack.logs(actor))
        assert found, stack.logs(actor)[-2000:]
        assert found.group(2).startswith(actor.attrs["Config"]["Hostname"])
        seeds[actor.name] = int(found.group(1))
    assert len(set(seeds.values())) == len(seeds) == 8, seeds


def test_scaling_8_to_2_to_6_while_training(stack):
    for count in (2, 6):
        before = version(stack)
        up(stack, "--no-recreate", "--scale", f"actor={count}")
        actors = stack.containers("actor")
        assert len(actors) == count
        wait_actors_scraped(stack, actors)
        wait_every_actor_pushes(stack, actors)
        wait_for(lambda: version(stack) >= before + 50, 120, "the version to keep climbing")


def test_learner_stop_and_start_resumes_and_every_actor_reconnects(stack):
    actors = stack.containers("actor")
    started, pushes = incarnations(actors), {a.id: stack.accepted_pushes(a) for a in actors}
    stack.compose("stop", "learner")
    stopped_at = int(re.findall(r"stopped at version (\d+)", stack.logs(stack.learner()))[-1])
    stack.compose("start", "learner")
    healthy = wait_healthy(stack, [stack.learner()])
    assert stack.learner_metric("a3c_learner_checkpoint_version") == stopped_at
    assert f"at version {stopped_at} " in stack.logs(stack.learner()).rsplit("resumed from", 1)[-1]
    wait_every_actor_pushes(stack, actors, after=pushes)
    assert incarnations(actors) == started  # reconnected on their own, no container restarted
    assert not stack.watch.failures_since(healthy)


def test_learner_killed_is_restarted_from_the_volume_and_every_actor_reconnects(stack):
    actors, learner = stack.containers("actor"), stack.learner()
    started, pushes = incarnations(actors), {a.id: stack.accepted_pushes(a) for a in actors}
    checkpoint = stack.learner_metric("a3c_learner_checkpoint_version")
    # Trained past its newest checkpoint, so the crash loses updates and the resume must come from the volume.
    reached = wait_for(lambda: version(stack) > checkpoint and version(stack), 60, "updates past the checkpoint")
    restarts = learner.attrs["RestartCount"]
    # A crash, as the OOM killer would do it: the service under tini is SIGKILLed and the container exits with
    # it (`docker kill` would count as a stop, which the restart policy respects).
    killed = learner.exec_run(["sh", "-c", "kill -KILL $(cat /proc/1/task/1/children)"])
    assert killed.exit_code in (0, 137), killed.output
    wait_for(lambda: stack.learner().attrs["RestartCount"] == restarts + 1, 60, "the engine to restart the learner")
    healthy = wait_healthy(stack, [stack.learner()])
    assert stack.learner_metric("a3c_learner_checkpoint_version") == checkpoint < reached
    wait_every_actor_pushes(stack, actors, after=pushes)
    assert incarnations(actors) == started
    assert not stack.watch.failures_since(healthy)


def test_down_then_up_resumes_from_the_named_volume_with_two_actors(stack):
    reached = version(stack)
    token = stack.learner().exec_run(["cat", "/credentials/learner/tokens"]).output
    stack.compose("down", "--timeout", "60")
    assert stack.volumes() == {f"{stack.project}_{name}" for name in ("checkpoints", "evaluation", "prometheus-data",
                                                                     "ca", "learner-credentials", "actor-credentials")}
    up(stack)
    actors = stack.containers("actor")
    assert len(actors) == 2  # the compose file's replicas
    wait_healthy(stack, [stack.learner()])
    assert stack.learner_metric("a3c_learner_checkpoint_version") >= reached  # the final checkpoint of `down`
    assert stack.learner().exec_run(["cat", "/credentials/learner/tokens"]).output == token  # kept, not remade
    wait_every_actor_pushes(stack, actors)
    REPORT["2 actors"] = f"{frames_per_second(stack):,.0f} frames/s"


def tensorboard(path: str, query: str = "") -> bytes:
    """An answer of TensorBoard's HTTP API (the one its pages use)."""
    with urllib.request.urlopen(f"http://{TENSORBOARD}{path}?{query}", timeout=10) as reply:
        return reply.read()


def test_the_evaluator_reports_and_tensorboard_shows_its_rounds_and_videos(stack):
    (evaluator,) = stack.containers("evaluator")
    rounds = wait_for(lambda: stack.metric(evaluator, 9402, "a3c_eval_rounds_total", {"report": "accepted"}) or 0,
                      600, "an evaluation round reported to the learner")
    REPORT["evaluator"] = (f"{rounds:.0f} round(s) by now; last mean "
                           f"{stack.metric(evaluator, 9402, 'a3c_eval_mean_return'):+.1f}")
    assert wait_healthy(stack, [evaluator])
    wait_for(lambda: all(stack.prometheus_query(expr) for title, expr in panel_expressions()
                         if title.startswith("Evaluat")), 120, "the evaluation row's expressions to return data")
    assert exec_ok(evaluator, "test", "-s", "/data/evaluation/best-eval.pt")
    assert "version-" in evaluator.exec_run(["ls", "/data/evaluation/videos"]).output.decode()
    assert exec_ok(evaluator, "a3c", "evaluate", "--checkpoint", "/data/evaluation", "--episodes", "1")
    # TensorBoard, from the image, reads the learner's event files: the curves, the evaluation and its video.
    def scalar_tags() -> set:
        return set(json.loads(tensorboard("/data/plugin/scalars/tags")).get(".", {}))
    wait_for(lambda: {"eval/mean_return", "train/mean_return", "loss/entropy"} <= scalar_tags(), 120,
             "TensorBoard to show the training and evaluation curves (it reloads every 5 s)")
    wait_for(lambda: "eval/video" in json.loads(tensorboard("/data/plugin/images/tags")).get(".", {}), 60,
             "TensorBoard to list the evaluator's video")
    (first, *_) = json.loads(tensorboard("/data/plugin/images/images", urlencode({"run": ".", "tag": "eval/video"})))
    video = tensorboard("/data/plugin/images/individualImage", first["query"])
    assert video[:6] == b"GIF89a"


def test_down_volumes_starts_fresh_and_leaves_no_volume_behind(stack):
    stack.compose("down", "--volumes", "--timeout", "60")
    assert stack.volumes() == set()
    up(stack)
    wait_healthy(stack, [stack.learner()])
    assert stack.learner_metric("a3c_learner_checkpoint_version") == -1
    assert "resumed from" not in stack.logs(stack.learner())
    for container in [stack.learner(), *stack.containers("actor")]:
        assert not [m for m in container.attrs["Mounts"] if m["Type"] == "volume" and m["Name"] not in stack.volumes()]
    stack.compose("down", "--volumes", "--timeout", "60")
    assert {v.name for v in stack.engine.volumes.list()} <= stack.volumes_before
