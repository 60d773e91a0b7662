"""Faults injected into real processes: killed actors, a killed or stopped learner, a torn checkpoint write,
actors that start first. The promise: actors are disposable, the learner resumes on its own, and a failure
costs at most the work since the last checkpoint."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from a3c import checkpoints
from a3c.config import LearnerConfig
from learner.service import LearnerService
from tests.processes import ROOT, LocalRun, free_port, metric, metric_total, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def run(tmp_path):
    run = LocalRun(tmp_path, learner_args=("--checkpoint-interval", "1", "--progress-file",
                                           str(tmp_path / "progress.jsonl")))
    yield run
    run.close()


def test_a_killed_actor_does_not_stop_training(run):
    run.start_learner()
    doomed, survivor = run.start_actor(), run.start_actor()
    wait_for(lambda: run.learner_metric("a3c_learner_actors_active") == 2, 60, "both actors", run.processes)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    version = run.version()
    wait_for(lambda: run.version() >= version + 50, 60, "training to go on", (run.learner, survivor))


@pytest.mark.parametrize("frontends", ["0", "2"], ids=["alone", "fronts"])
def test_a_stopped_actor_settles_its_last_push_says_it_leaves_and_exits_at_once(tmp_path, frontends):
    run = LocalRun(tmp_path, learner_args=("--frontends", frontends))
    try:
        run.start_learner()
        leaving, staying = run.start_actor(), run.start_actor()
        wait_for(lambda: run.learner_metric("a3c_learner_actors_active") == 2 and run.version() >= 20, 60,
                 "both actors to push", run.processes)
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(timeout=5) == 0  # the grace periods are 20 s (compose) and 30 s (Kubernetes)
        # Not after the minute of silence that marks a crashed actor: the gauge drops as soon as it has left.
        wait_for(lambda: run.learner_metric("a3c_learner_actors_active") == 1, 2, "the learner to count one actor",
                 (run.learner, staying))
        counted = re.search(r"stopped after (\d+) accepted pushes \((\d+) frames\)", run.log("actor-0"))
        assert counted, run.log("actor-0")[-2000:]
        assert "the last push got no answer" not in run.log("actor-0")
        stop(staying)
        wait_for(lambda: run.learner_metric("a3c_learner_actors_active") == 0, 2, "the learner to count none",
                 (run.learner,))
        counted_too = re.search(r"stopped after \d+ accepted pushes \((\d+) frames\)", run.log("actor-1"))
        # Every frame either actor counted as accepted, the learner counted: no push was lost on the way out.
        assert run.learner_metric("a3c_learner_env_frames_total") == int(counted.group(2)) + int(counted_too.group(1))
    finally:
        run.close()


def test_a_killed_learner_is_restarted_and_resumes_where_its_checkpoint_was(run, tmp_path):
    """Also: the actors roll out while it is away, holding only their newest gradient, and send it first."""
    run.start_learner()
    run.start_actor(), run.start_actor()
    ports = run.actor_metrics
    latest = tmp_path / "checkpoints" / checkpoints.LATEST
    wait_for(lambda: latest.exists() and checkpoints.load(latest)["global"]["version"] >= 100, 90,
             "a checkpoint at version 100", run.processes)
    run.learner.send_signal(signal.SIGKILL)
    run.learner.wait()
    saved = checkpoints.load(latest)
    rollouts = [metric(port, "a3c_actor_rollout_seconds_count") for port in ports]
    answered = [metric_total(port, "a3c_actor_pushes_total") for port in ports]

    # What a restarted learner holds: exactly the checkpoint's model, optimizer, version and counters.
    config = LearnerConfig(env="CartPole-v1", listen="127.0.0.1:0", metrics_port=0,
                           checkpoint_dir=str(tmp_path / "checkpoints"))
    probe = LearnerService(config)
    probe.start()
    try:
        assert probe.model.version == saved["global"]["version"]
        assert probe.stats.updates == saved["stats"]["updates"]
        assert probe.stats.env_frames == saved["stats"]["env_frames"]
        for name, value in saved["global"]["model"].items():
            assert torch.equal(probe.model.model.state_dict()[name], value)
        restored = probe.model.optimizer.state_dict()["state"]
        assert restored and all(torch.equal(restored[k]["square_avg"], v["square_avg"])
                                for k, v in saved["global"]["optimizer"]["state"].items())
    finally:
        probe.stop_serving(grace=None)
        probe.metrics_server.shutdown()

    # Not idle meanwhile: rollouts go on, each gradient replacing the one before (at most one held).
    wait_for(lambda: all(metric(port, "a3c_actor_gradients_dropped_total") >= 3 for port in ports), 30,
             "rollouts while the learner is away", tuple(run.actors))
    assert all(metric(port, "a3c_actor_rollout_seconds_count") >= before + 3 for port, before in zip(ports, rollouts))

    # The real learner comes back on its port; the actors, never restarted, reconnect on their own and send the
    # gradient they held first: applied if the learner resumed at its base version, else refused as out of date.
    run.start_learner()
    assert run.version() >= saved["global"]["version"]
    wait_for(lambda: all(metric_total(port, "a3c_actor_pushes_total") > before for port, before in zip(ports, answered)),
             30, "each held gradient to be answered", run.processes)
    wait_for(lambda: run.version() >= saved["global"]["version"] + 100, 90, "the version to climb again",
             run.processes)
    assert "resumed from" in run.log("learner")
    assert all(actor.poll() is None for actor in run.actors)
    for index in range(2):
        log = run.log(f"actor-{index}")
        assert "rolling out while reconnecting" in log
        assert re.search(r"sent the gradient it held while the learner was away: (applied|refused as out of date)",
                         log)


def test_sigterm_makes_the_learner_write_a_final_checkpoint(run, tmp_path):
    run.start_learner()
    run.start_actor()
    wait_for(lambda: run.version() >= 50, 60, "50 updates", run.processes)
    stop(run.learner)
    assert run.learner.returncode == 0
    final = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[-1])
    saved = checkpoints.load(tmp_path / "checkpoints" / checkpoints.LATEST)
    # Nothing applied before the stop is missing from the checkpoint.
    assert saved["global"]["version"] == final["version"] == final["updates"] == saved["stats"]["updates"]


KILLED_WRITER = """
import sys, torch
from a3c import checkpoints
for version in range(10**6):
    checkpoints.save(sys.argv[1], {"version": version, "weights": torch.full((4_000_000,), float(version))})
    print(version, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.01, 0.02, 0.04, 0.08])
def test_a_kill_during_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, delay):
    """A 16 MB checkpoint is rewritten in a loop and the writer SIGKILLed at some point of a later write."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert writer.stdout.readline().strip() == "0"  # the first checkpoint is complete
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    state, _ = checkpoints.load_newest(tmp_path)
    assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["version"])))
    checkpoints.save(tmp_path, {"version": -1})  # the next writer sweeps away what the killed one left
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_torn_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    checkpoints.save(tmp_path, {"version": 1})
    checkpoints.save(tmp_path, {"version": 2})
    (tmp_path / checkpoints.LATEST).write_bytes(b"torn")
    state, path = checkpoints.load_newest(tmp_path)
    assert state == {"version": 1} and path.name == checkpoints.PREVIOUS


def test_checkpoints_refuse_to_unpickle_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # what a crafted checkpoint runs when unpickled: here, it only leaves a file
            return (Path.touch, (marker,))

    torch.save({"version": Evil()}, tmp_path / checkpoints.LATEST)  # a real checkpoint file, with code in it
    assert checkpoints.load_newest(tmp_path) is None
    assert not marker.exists()


def test_actors_started_before_the_learner_wait_for_it(run):
    run.grpc_port = free_port()  # the learner's address is known before it runs, as a compose service name is
    run.start_actor(), run.start_actor()
    wait_for(lambda: all("waiting for the learner" in run.log(f"actor-{i}") for i in range(2)), 60,
             "both actors to say they wait", run.processes)
    run.start_learner()
    wait_for(lambda: run.learner_metric("a3c_learner_actors_active") == 2, 60, "both actors", run.processes)


def test_sigterm_ends_an_actor_cleanly(run):
    run.start_learner()
    actor = run.start_actor()
    wait_for(lambda: run.version() >= 10, 60, "a few updates", run.processes)
    stop(actor)
    assert actor.returncode == 0
    assert "stopped after" in run.log("actor-0") and "Traceback" not in run.log("actor-0")
