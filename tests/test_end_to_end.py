"""`a3c train` through real processes: the learner and actors as separate programs on loopback."""

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from a3c.ports import read_ports
from apps import playing
from apps.curves import read_progress
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import ROOT, run_a3c
from tests.processes import http_get, wait_for


def summary(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """`a3c train` on CartPole to 195, with an evaluator (a round every 2 s) and TensorBoard on, as by default."""
    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    result = run_a3c("train", "--env", "CartPole-v1", "--actors", "2", "--stop-at-return", "195",
                     "--max-seconds", "300", "--run-dir", str(run_dir), "--log-interval", "1", "--evaluator",
                     "--eval-interval", "2", timeout=400)
    return result, run_dir


@pytest.mark.slow
def test_cartpole_reaches_195(cartpole_run):
    result, run_dir = cartpole_run
    assert result.returncode == 0, result.stderr[-3000:]
    final = summary(result)
    # The last mean may dip under the target while the processes stop; the best one reached it.
    assert final["reached"] is True and final["best_mean_return"] >= 195
    assert set(final) >= {"frames", "updates", "episodes", "seconds", "frames_per_second", "mean_return"}
    assert final["frames"] > 0 and final["updates"] > 0 and final["episodes"] >= 100
    assert (run_dir / "checkpoints" / "latest.pt").exists()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_run_is_evaluated_and_shown_in_tensorboard(cartpole_run):
    result, run_dir = cartpole_run
    final = summary(result)
    assert final["eval_mean_return"] is not None
    records = [r for r in read_progress(run_dir / "progress.jsonl") if r["eval_mean_return"] is not None]
    assert records and all(r["eval_min_return"] <= r["eval_mean_return"] <= r["eval_max_return"] for r in records)
    best = playing.load_policy(run_dir / "evaluation")
    assert best.env_id == "CartPole-v1" and best.version <= records[-1]["version"]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/mean_return", "train/staleness", "speed/frames_per_second", "loss/policy", "loss/value",
            "loss/entropy", "loss/grad_norm", "eval/mean_return"} <= tags, tags
    means = events.Scalars("train/mean_return")
    assert max(m.value for m in means) >= 195 and [m.step for m in means] == sorted(m.step for m in means)
    assert [e.value for e in events.Scalars("eval/mean_return")][-1] == pytest.approx(final["eval_mean_return"])


@pytest.mark.slow
def test_missed_target_exits_non_zero(tmp_path):
    result = run_a3c("train", "--env", "CartPole-v1", "--actors", "1", "--stop-at-return", "1000",
                     "--max-frames", "3000", "--run-dir", str(tmp_path / "run"), "--log-interval", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    final = summary(result)
    assert final["reached"] is False and final["frames"] >= 3000


@pytest.mark.slow
def test_pong_smoke_two_actors(tmp_path):
    """Two actors on real ALE Pong push gradients (40 pushes' worth of frames): the version climbs and losses stay
    finite."""
    run_dir = tmp_path / "run"
    result = run_a3c("train", "--actors", "2", "--num-envs", "4", "--max-frames", str(40 * 4 * 20 * 4),
                     "--run-dir", str(run_dir), "--log-interval", "1", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    final = summary(result)
    records = read_progress(run_dir)
    versions = [r["version"] for r in records]
    assert versions == sorted(versions) and versions[-1] > 20
    trained = [r for r in records if r["policy_loss"] is not None]
    assert len(trained) >= 3
    for record in trained:
        for key in ("policy_loss", "value_loss", "entropy", "grad_norm"):
            assert record[key] == record[key] and abs(record[key]) < 1e6, (key, record)
    assert final["frames"] == 4 * final["agent_steps"] > 0
    assert final["updates"] == versions[-1]


@pytest.mark.slow
@pytest.mark.parametrize("sigint_at_start", ["default", "ignored"])  # "ignored": started from a script's `cmd &`
def test_ctrl_c_stops_every_process_and_still_reports(tmp_path, sigint_at_start):
    run_dir = tmp_path / "run"
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_at_start == "ignored" else None
    proc = subprocess.Popen([sys.executable, "-m", "apps", "train", "--env", "CartPole-v1", "--actors", "2",
                             "--run-dir", str(run_dir), "--log-interval", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ignore_sigint)
    wait_for(lambda: (run_dir / "progress.jsonl").exists() and read_progress(run_dir)[-1]["updates"] > 0, 60,
             "the first update")
    # Every process bound port 0 for its metrics; the file_sd list a Prometheus would read names each of them.
    targets = wait_for(lambda: (run_dir / "scrape-targets.json").exists()
                       and json.loads((run_dir / "scrape-targets.json").read_text()), 30, "the scrape targets")
    assert [(group["labels"]["job"], len(group["targets"])) for group in targets] == [("learner", 1), ("actor", 2)]
    for group in targets:
        for target in group["targets"]:
            exposed = http_get(f"http://{target}/metrics")
            assert f"a3c_{group['labels']['job']}_" in exposed
    # The run has a token of its own: other users of the machine cannot push to it over loopback either.
    assert (run_dir / "auth-tokens").stat().st_mode & 0o077 == 0
    grpc_port = read_ports(run_dir / "learner.ports")["grpc"]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.LearnerStub(channel).GetRunSpec(pb.GetRunSpecRequest(actor_id="neighbour"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3  # one learner, two actors
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["updates"] > 0
    assert "Traceback" not in stderr
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
