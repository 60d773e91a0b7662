"""Autoscaling the actors on the learner's room for more pushes: the manifests, their query under a real
Prometheus engine, and the metric under more and fewer pushers."""

import subprocess
import threading
import time

import grpc
import kubernetes_validate
import pytest
import yaml

from a3c.wire import channel_options
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import sound_push
from tests.deployment import manifest, rendered_manifests
from tests.processes import ROOT, tool

AUTOSCALING = ROOT / "deploy" / "k8s" / "autoscaling"


def load(name: str) -> dict:
    return yaml.safe_load((AUTOSCALING / name).read_text())


def keda_query() -> str:
    (trigger,) = load("keda-scaledobject.yaml")["spec"]["triggers"]
    return trigger["metadata"]["query"]


def test_the_hpa_validates_and_both_autoscalers_scale_the_shipped_actors_alike():
    hpa, keda = load("hpa.yaml"), load("keda-scaledobject.yaml")
    kubernetes_validate.validate(hpa, "1.32.0", strict=True)
    actor = manifest(rendered_manifests(), "Deployment", "actor")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", actor["metadata"]["name"])
    assert keda["spec"]["scaleTargetRef"]["name"] == actor["metadata"]["name"]
    assert hpa["metadata"]["namespace"] == keda["metadata"]["namespace"] == actor["metadata"]["namespace"]
    assert hpa["spec"]["minReplicas"] == keda["spec"]["minReplicaCount"] <= actor["spec"]["replicas"]
    assert actor["spec"]["replicas"] <= hpa["spec"]["maxReplicas"] == keda["spec"]["maxReplicaCount"]
    assert hpa["spec"]["behavior"] == keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    (metric,) = hpa["spec"]["metrics"]
    (trigger,) = keda["spec"]["triggers"]
    # "Value": the learner's room is one number to hold at the target, not a load to share among the actors.
    assert metric["external"]["target"] == {"type": "Value", "value": "200m"}
    assert trigger["metricType"] == "Value" and float(trigger["metadata"]["threshold"]) == 0.2
    # The adapter's rule asks Prometheus what KEDA asks it, templated for the namespace.
    (rule,) = load("prometheus-adapter.yaml")["externalRules"]
    assert rule["name"]["as"] == metric["external"]["metric"]["name"]
    templated = (rule["metricsQuery"].replace("<<.Series>>", "a3c_learner_busy_seconds_total")
                 .replace("<<.LabelMatchers>>", 'namespace="a3c",job="learner"').replace(" by (<<.GroupBy>>)", ""))
    assert templated == keda_query()


def test_the_query_is_the_learners_room_under_prometheus_own_engine(tmp_path):
    """promtool evaluates the shipped query on series of a learner busy 25%, then 87.5%, of the time."""
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "a3c", "interval": "15s", "rules": [{"record": "room", "expr": keda_query()}]}]}))
    labels = '{namespace="a3c",job="learner"}'
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "15s",
        "tests": [{"interval": "15s",
                   # Seconds held by the learner, sampled every 15 s: 3.75 s a sample (25%), then 13.125 s (87.5%).
                   "input_series": [{"series": f"a3c_learner_busy_seconds_total{labels}",
                                     "values": "0+3.75x8 30+13.125x8"}],
                   "promql_expr_test": [{"expr": "room", "eval_time": "2m", "exp_samples": [{"labels": "room", "value": 0.75}]},
                                        {"expr": "room", "eval_time": "4m15s", "exp_samples": [{"labels": "room", "value": 0.125}]}]}]}))
    result = subprocess.run([tool("promtool"), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def busy_share(learner, phase: str, pushers: int, seconds: float, pause: float) -> float:
    """The share of `seconds` the learner held its network while `pushers` threads pushed, each pausing `pause`
    seconds between pushes (an actor's rollout)."""
    busy = learner.metrics.busy_seconds
    stop_at = time.monotonic() + seconds
    unexpected: list[grpc.StatusCode] = []

    def push(index: int) -> None:
        options = channel_options(learner.run_spec.max_message_bytes)
        with grpc.insecure_channel(f"127.0.0.1:{learner.port}", options=options) as channel:
            stub, seq = pb_grpc.LearnerStub(channel), 0
            while time.monotonic() < stop_at:
                seq += 1
                try:
                    stub.PushGradients(sound_push(learner, actor_id=f"{phase}-{index}/0", seq=seq,
                                                  base_version=learner.model.version), timeout=10)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:  # stale: others pushed meanwhile
                        unexpected.append(err.code())
                time.sleep(pause)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(pushers)]
    before, start = busy._value.get(), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    assert not unexpected
    return (busy._value.get() - before) / (time.monotonic() - start)


@pytest.mark.slow
def test_the_learners_room_shrinks_with_more_pushers_and_comes_back_with_fewer(start_learner):
    learner = start_learner(env="PongNoFrameskip-v4")  # a real network: each apply takes milliseconds
    one = busy_share(learner, "one", 1, 3.0, pause=0.05)
    eight = busy_share(learner, "eight", 8, 3.0, pause=0.05)
    one_again = busy_share(learner, "one-again", 1, 3.0, pause=0.05)
    print(f"busy share: 1 pusher {one:.2f}, 8 pushers {eight:.2f}, 1 again {one_again:.2f}")
    assert 0 < one < eight <= 1.0
    assert one_again < eight
    assert abs(one_again - one) < (eight - one) / 2, (one, eight, one_again)
