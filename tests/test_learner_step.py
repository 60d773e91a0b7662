"""One learner step: a known gradient through plain SGD moves every parameter by -lr * gradient."""

import math
import threading

import grpc
import pytest
import torch

from a3c import codec
from a3c.model import ModelSpec, build_model
from a3c.framing import ParamsEncoder
from learner.global_model import GlobalModel
from learner.optimizers import TFStyleRMSprop
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import rollout_counts

SPEC = ModelSpec(kind="mlp", obs_shape=(4,), num_actions=2)


def test_apply_with_sgd_subtracts_lr_times_gradient_and_bumps_version():
    torch.manual_seed(0)
    model = GlobalModel(SPEC, optimizer="sgd", lr=0.25)
    before = [p.detach().clone() for p in model.params]
    gradients = [torch.randn_like(p) for p in model.params]
    with model.lock:
        version = model.apply(gradients)
    assert version == 1 == model.version
    for p, p0, g in zip(model.params, before, gradients):
        torch.testing.assert_close(p.detach(), p0 - 0.25 * g, rtol=0, atol=1e-7)
        assert p.grad is None


@pytest.mark.parametrize("optimizer", ["rmsprop", "torch-rmsprop"])
def test_rmsprop_state_of_parameters_without_gradient_never_turns_denormal(optimizer):
    # Zero gradients (dead units) decay RMSProp's running average geometrically; below 1.2e-38 floats turn
    # denormal and every step over them gets several times slower. Updates run on gRPC worker threads.
    model = GlobalModel(SPEC, optimizer=optimizer, lr=1e-3)
    zeros = [torch.zeros_like(p) for p in model.params]
    model.apply(zeros)
    for state in model.optimizer.state.values():
        state["square_avg"].fill_(1.5e-38)  # nearly denormal: 50 steps of decay by 0.99 take it to 9e-39

    def updates() -> None:
        with model.lock:
            for _ in range(50):
                model.apply(zeros)

    worker = threading.Thread(target=updates)
    worker.start()
    worker.join()
    smallest_normal = torch.finfo(torch.float32).tiny
    for state in model.optimizer.state.values():
        average = state["square_avg"]
        assert not ((average != 0) & (average.abs() < smallest_normal)).any()


def test_one_push_over_grpc_applies_exactly_the_sent_gradient(start_learner):
    learner = start_learner(optimizer="sgd", lr=0.5, max_grad_norm=100.0)
    model = learner.model
    before = [p.detach().clone() for p in model.params]
    gradients = [torch.full_like(p, 0.125) for p in model.params]
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        reply = pb_grpc.LearnerStub(channel).PushGradients(pb.PushGradientsRequest(
            actor_id="t", seq=1, base_version=0, gradients=codec.encode_all(zip((n for n, _ in model.layout), gradients)),
            **rollout_counts(learner), want_params=True), timeout=10)
    assert reply.version == 1
    for p, p0 in zip(model.params, before):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * 0.125, rtol=0, atol=1e-7)
    # The reply carries the new parameters, bit for bit in the wire dtype.
    assert reply.params.version == 1 and len(reply.params.tensors) == len(model.params)
    for message, p in zip(reply.params.tensors, model.params):
        assert torch.equal(codec.decode(message), p.detach().to(model.wire_dtype))


def test_a_resumed_run_reports_its_whole_time_and_average_speed():
    from learner.metrics import LearnerMetrics
    from learner.stats import TrainingStats
    from prometheus_client import CollectorRegistry

    now = [1000.0]
    stats = TrainingStats(LearnerMetrics(CollectorRegistry()), clock=lambda: now[0])
    stats.load_state({"env_frames": 600_000, "agent_steps": 150_000, "updates": 900, "episodes": 40,
                      "returns": [-20.0], "best_mean_return": -20.0, "seconds": 100.0})
    stats.record_rollout(400_000, 100_000, [])
    now[0] += 100.0
    record = stats.snapshot(version=901)
    assert record["seconds"] == 200.0 and record["frames"] == 1_000_000
    assert record["average_frames_per_second"] == 5000.0  # all frames over all time, not over this session


def test_a_checkpoint_from_before_the_flat_buffer_resumes_the_same_optimizer():
    # Checkpoints used to hold RMSProp's running average per parameter; the flat buffer keeps one.
    torch.manual_seed(0)
    old_model = GlobalModel(SPEC, optimizer="rmsprop", lr=1e-3)
    reference = build_model(SPEC)
    reference.load_state_dict(old_model.model.state_dict())
    per_parameter = TFStyleRMSprop(reference.parameters(), lr=1e-3, eps=1e-5)
    # Gradients of about 10: the running averages (which start at 1) then differ enough from one entry to the
    # next that a misplaced one changes the step.
    steps = [[torch.randn_like(p) * 10 for p in reference.parameters()] for _ in range(3)]
    for param, grad in zip(reference.parameters(), steps[0]):
        param.grad = grad
    per_parameter.step()
    resumed = GlobalModel(SPEC, optimizer="rmsprop", lr=1e-3)
    resumed.load_state({"model": reference.state_dict(), "optimizer": per_parameter.state_dict(), "version": 1})
    for grads in steps[1:]:
        for param, grad in zip(reference.parameters(), grads):
            param.grad = grad
        per_parameter.step()
        with resumed.lock:
            resumed.apply(grads)
    for mine, theirs in zip(resumed.params, reference.parameters()):
        torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("torch_only", [False, True], ids=["c-where-built", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int8])
def test_a_push_reply_carries_the_parameters_of_its_version(monkeypatch, torch_only, dtype):
    if torch_only:
        monkeypatch.setattr(codec, "_wire", None)
    layout = [("conv.weight", (64, 80)), ("conv.bias", (64,)), ("head", (3, 7))]  # int8 quantizes the first
    flat = torch.randn(sum(math.prod(shape) for _, shape in layout))
    encode = ParamsEncoder(layout, dtype)
    reply = pb.PushGradientsResponse.FromString(encode.push_reply(7, flat))
    assert reply.version == 7 and reply.params == pb.Params.FromString(encode.params(7, flat))
    assert reply.params.version == 7 and [t.name for t in reply.params.tensors] == [n for n, _ in layout]
    received = torch.cat([t.reshape(-1) for t in codec.decode_all(reply.params.tensors, layout)])
    # Float dtypes round each value to nearest; int8 to the nearest of 255 steps of its row's largest value.
    tolerance = {torch.float32: 0, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.int8: 0.5 / 127}[dtype]
    torch.testing.assert_close(received, flat, rtol=tolerance, atol=tolerance * float(flat.abs().max()))
