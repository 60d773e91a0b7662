"""32 light actors (precomputed gradients, no environments) hammer one learner process for a bounded time."""

import json
import statistics
import threading
import time
from collections import Counter

import grpc
import pytest
import torch

from a3c import codec
from a3c.envs import describe_env
from apps.health import check_grpc
from a3c.model import ModelSpec, build_model, parameter_layout
from a3c.wire import channel_options, message_limit
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.processes import LocalRun, metric_total, wait_for

PUSHERS = 32
SECONDS = 8.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib * 1024


@pytest.mark.slow
@pytest.mark.parametrize("frontends", [0, 2])
def test_32_pushers_every_push_accounted_for_no_deadlock_flat_memory(tmp_path, frontends):
    run = LocalRun(tmp_path, learner_args=("--frontends", str(frontends)))
    run.start_learner()
    wait_for(lambda: check_grpc(f"127.0.0.1:{run.grpc_port}", "a3c.v1.Learner", 1) or True, 60, "SERVING",
             run.processes)
    info = describe_env("CartPole-v1")
    model = build_model(ModelSpec.for_env(info, center_frames=True))
    layout = parameter_layout(model)
    scale = 0.4 / sum(p.numel() for p in model.parameters()) ** 0.5  # under the 0.5 clip norm
    gradients = codec.encode_all((name, torch.full(shape, scale)) for name, shape in layout)
    options = channel_options(message_limit(sum(p.numel() for p in model.parameters())))

    outcomes: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    rss_samples: list[int] = []
    stop_at = time.monotonic() + SECONDS

    def pusher(index: int) -> None:
        version, seq = 0, 0
        with grpc.insecure_channel(f"127.0.0.1:{run.grpc_port}", options=options) as channel:
            stub = pb_grpc.LearnerStub(channel)
            while time.monotonic() < stop_at:
                seq += 1
                request = pb.PushGradientsRequest(actor_id=f"load-{index}", seq=seq, base_version=version,
                                                  gradients=gradients, env_frames=20, agent_steps=20)
                start = time.perf_counter()
                try:
                    version = stub.PushGradients(request, timeout=10).version
                    outcome = "OK"
                except grpc.RpcError as err:
                    outcome = err.code().name
                    if err.code() == grpc.StatusCode.FAILED_PRECONDITION:  # too stale: catch up, as actors do
                        version = stub.GetParams(pb.GetParamsRequest(actor_id=f"load-{index}", have_version=-1),
                                                 timeout=10).version
                with lock:
                    outcomes[outcome] += 1
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(PUSHERS)]
    for thread in threads:
        thread.start()
    while time.monotonic() < stop_at:
        time.sleep(0.5)
        rss_samples.append(rss_bytes(run.learner.pid))
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert not any(t.is_alive() for t in threads), "a pusher is stuck: deadlock or a call without deadline"
        sent = sum(outcomes.values())
        accepted = outcomes["OK"]
        def rejected_total() -> float:
            return metric_total(run.learner_metrics, "a3c_learner_gradients_rejected_total")
        assert accepted > 0 and set(outcomes) <= {"OK", "FAILED_PRECONDITION"}, outcomes
        # Every push is accounted for: applied, or refused and counted as refused.
        assert run.learner_metric("a3c_learner_updates_total") == accepted
        # (Front processes report their refusals through a pipe: give the last ones a moment.)
        wait_for(lambda: accepted + rejected_total() == sent, 5, "every push to be counted")
        # Memory is flat once warmed up: the second half grows by less than 10% over the first.
        half = len(rss_samples) // 2
        assert max(rss_samples[half:]) < 1.10 * max(rss_samples[:half]), rss_samples
        latencies.sort()
        report = {"pushers": PUSHERS, "seconds": SECONDS, "pushes": sent, "accepted": accepted,
                  "pushes_per_second": round(sent / SECONDS, 1),
                  "p50_ms": round(1000 * statistics.median(latencies), 2),
                  "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
                  "learner_rss_mb": round(max(rss_samples) / 2**20, 1)}
        print("LOAD " + json.dumps(report))
    finally:
        run.close()
