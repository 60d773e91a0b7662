"""A short smoke run of `make bench`, so the benchmark cannot rot: every part runs and reports a number."""

import json
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.slow
def test_benchmark_quick_run_reports_every_figure(tmp_path):
    output = tmp_path / "bench.json"
    # One pusher process of 4 threads: the capacity runs only have to report a number, not load the learner.
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--env", "CartPole-v1", "--pushers", "1x4",
                             "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert set(report["machine"]["cpu_features"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "f16c"}
    assert report["machine"]["cpu_features"] and ", ".join(report["machine"]["cpu_features"]) in result.stdout
    assert report["ceiling"]["frames_per_second"] > 0
    (run,) = report["end_to_end"]
    assert run["frames_per_second"] > 0 and run["bytes_per_agent_step"] > 0
    assert 0 < run["rpc_share"] < 1 and 0 < run["wait_share"] < 1
    assert run["latency_ms"]["PushGradients_p50_ms"] > 0
    for service in ("learner", "actor"):  # the processes' own memory, found through `a3c train`'s children
        assert 0 < run["peak_private_mb"][service] < run["peak_rss_mb"][service]
    assert report["peer"]["frames_per_second"] > 0, report["peer"]
    assert report["learner_capacity"]["updates_per_second"] > 0
    fronted = report["learner_capacity_frontends"]
    assert fronted["updates_per_second"] > 0 and fronted["fronts_cpu_ms_per_update"] > 0
    assert "(gRPC in front processes)" in result.stdout
    assert "| a3c train, 1 actor(s) |" in result.stdout


def test_the_actor_profile_splits_a_rollout_into_its_parts():
    from bench.actor_profile import profile

    found = profile("CartPole-v1", rounds=3)
    parts = found["ms_per_rollout"]
    assert found["frames_per_rollout"] == 8 * 20 and found["conv_precision"] == "float32"
    assert parts["stepping_the_envs"] > 0 and parts["rollout_and_gradient"] > parts["stepping_the_envs"]
    assert found["frames_per_second_per_core"] == pytest.approx(160 / parts["rollout_and_gradient"] * 1e3)
    assert "cpu_features" in found["machine"]
