"""A learner serving gRPC through front processes (--frontends): real processes, real actors, injected faults.
The rules of a learner serving alone (test_grpc_integration runs those against both) hold across process
boundaries; here: what dies, what restarts, what is left behind."""

import json
import os
import signal
import subprocess
import time

import grpc
import pytest

from a3c import checkpoints
from a3c.config import LearnerConfig
from learner.service import LearnerService
from learner.serving import CannotServe
from tests.processes import LocalRun, stop, wait_for

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """The front processes of a learner (multiprocessing's resource tracker is not one of them)."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()
            if "resource_tracker" not in open(f"/proc/{p}/cmdline").read()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def run(tmp_path):
    run = LocalRun(tmp_path, learner_args=("--frontends", "2", "--checkpoint-interval", "1", "--progress-file",
                                           str(tmp_path / "progress.jsonl")))
    yield run
    run.close()


def test_a_killed_front_is_started_again_and_training_goes_on(run):
    run.start_learner()
    fronts = children(run.learner.pid)
    assert len(fronts) == 2
    run.start_actor()
    run.start_actor()
    wait_for(lambda: run.version() >= 30, 60, "30 updates", run.processes)
    os.kill(fronts[0], signal.SIGKILL)
    wait_for(lambda: run.learner_metric("a3c_learner_frontend_restarts_total") == 1, 30, "the front's restart",
             run.processes)
    again = run.version()
    # Actors connected to the killed front reconnect; every actor goes on training.
    wait_for(lambda: run.version() >= again + 60, 60, "60 more updates", run.processes)
    assert len(children(run.learner.pid)) == 2
    assert "gRPC front 0 exited" in run.log("learner") or "gRPC front 1 exited" in run.log("learner")
    assert all(actor.poll() is None for actor in run.actors)


def test_a_front_that_keeps_dying_at_once_is_restarted_after_doubling_pauses(tmp_path):
    run = LocalRun(tmp_path, learner_args=("--frontends", "1"))
    try:
        run.start_learner()
        wait_for(lambda: "serving on" in run.log("learner"), 60, "the front to listen", run.processes)
        gaps = []
        for restarts in (1, 2, 3):
            (front,) = children(run.learner.pid)
            killed = time.monotonic()
            os.kill(front, signal.SIGKILL)
            wait_for(lambda: run.learner_metric("a3c_learner_frontend_restarts_total") == restarts, 60,
                     f"restart {restarts}", run.processes)
            gaps.append(time.monotonic() - killed)
        # Each front killed within 10 s of its start waits twice as long as the one before (2, 4, 8 s; the very
        # first may have run 10 s on a slow machine and come back at once): it cannot spin.
        assert 1.5 <= gaps[1] < 30 and gaps[2] >= 1.5 * gaps[1], gaps
        assert run.learner.poll() is None
    finally:
        run.close()


def test_sigterm_stops_the_fronts_and_the_final_checkpoint_holds_every_update(run, tmp_path):
    run.start_learner()
    fronts = children(run.learner.pid)
    run.start_actor()
    wait_for(lambda: run.version() >= 50, 60, "50 updates", run.processes)
    stop(run.learner)
    assert run.learner.returncode == 0
    assert not [pid for pid in fronts if alive(pid)]
    final = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[-1])
    saved = checkpoints.load(tmp_path / "checkpoints" / checkpoints.LATEST)
    assert saved["global"]["version"] == final["version"] == final["updates"] == saved["stats"]["updates"]
    assert "Traceback" not in run.log("learner")


def test_fronts_of_a_killed_learner_exit(run):
    run.start_learner()
    fronts = children(run.learner.pid)  # perhaps still starting: they must exit all the same
    assert fronts
    run.learner.kill()
    run.learner.wait()
    wait_for(lambda: not [pid for pid in fronts if alive(pid)], 15, "the fronts to exit")


def test_a_second_learner_on_the_port_of_one_with_fronts_is_refused(tmp_path):
    first = LearnerService(LearnerConfig(env="CartPole-v1", listen="127.0.0.1:0", checkpoint_dir=str(tmp_path / "a"),
                                         metrics_port=0, frontends=1))
    try:
        first.start()
        for frontends in (0, 1):  # serving alone, or through fronts of its own: either would share the port
            with pytest.raises(CannotServe, match="cannot listen"):
                LearnerService(LearnerConfig(env="CartPole-v1", listen=f"127.0.0.1:{first.port}",
                                             checkpoint_dir=str(tmp_path / "b"), metrics_port=0, frontends=frontends))
        with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        first.stop_serving(grace=None)
        first.metrics_server.shutdown()
