"""A real learner server on port 0 and real clients: the pull / push / pull cycle and refused pushes."""


import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a3c import codec, int8
from a3c.config import MAX_NUM_ENVS
from a3c.framing import Push
from a3c.metrics import new_registry
from a3c.model import ModelSpec, build_model, parameter_layout
from a3c.reaching import LearnerUnreachable
from a3c.wire import channel_options
from actor.client import LearnerClient
from actor.gradients import compute_gradients
from actor.metrics import ActorMetrics
from actor.rollout import VectorRollout
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import (counters, expect_rejections, rejections, rollout_counts, serving_learner, sound_push,
                            zero_gradients)
from tests.processes import wait_for


@pytest.fixture(params=[0, 2], ids=["served-alone", "2-frontends"])
def learner(request, start_learner):
    """Every test here runs against a learner serving gRPC itself and one serving through 2 front processes."""
    return start_learner(frontends=request.param)


@pytest.fixture(scope="module", params=[0, 2], ids=["served-alone", "2-frontends"])
def refusing_learner(request, tmp_path_factory):
    """A learner and a stub for tests whose every push is refused, so that they can share it."""
    with serving_learner(tmp_path_factory.mktemp("refusing"), frontends=request.param) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}",
                                  options=channel_options(service.run_spec.max_message_bytes)) as channel:
        yield service, pb_grpc.LearnerStub(channel)


def test_actor_client_pull_push_pull(learner):
    client = LearnerClient(f"127.0.0.1:{learner.port}", "it-actor", rpc_timeout=10,
                           metrics=ActorMetrics(new_registry()))
    spec = client.connect(timeout=10)
    assert (spec.env_id, spec.model.kind, list(spec.model.obs_shape), spec.model.num_actions) == (
        "CartPole-v1", "mlp", [4], 2)
    assert spec.t_max == learner.config.t_max and spec.max_message_bytes > 4 * 4675

    first = client.get_params(-1)
    assert first.version == 0 and len(first.tensors) == len(learner.model.layout)
    assert not client.get_params(0).tensors  # nothing new: no tensors sent again

    model = build_model(ModelSpec.from_message(spec.model))
    layout = parameter_layout(model)
    with torch.no_grad():
        for p, t in zip(model.parameters(), codec.decode_all(first.tensors, layout)):
            p.copy_(t)
    rollout = VectorRollout(spec.env_id, num_envs=3, t_max=spec.t_max, seed=1).collect(model)
    result = compute_gradients(model, rollout, spec.gamma, spec.entropy_coef, spec.value_coef,
                               spec.max_grad_norm, spec.clip_rewards)
    reply = client.push(Push(1, 0, list(zip((n for n, _ in layout), result.gradients)),
                             env_frames=rollout.agent_steps, agent_steps=rollout.agent_steps, episode_returns=[12.0],
                             loss=pb.LossStats(entropy=0.69)))
    assert reply.version == 1

    second = client.get_params(0)
    assert second.version == 1
    assert second.tensors[0].dtype == spec.wire_dtype
    for message, p in zip(second.tensors, learner.model.params):
        assert torch.equal(codec.decode(message), p.detach().to(codec.TORCH_DTYPES[spec.wire_dtype]))
    assert not torch.equal(codec.decode(second.tensors[0]), codec.decode(first.tensors[0]))
    assert (learner.stats.env_frames, learner.stats.episodes, learner.stats.updates) == (3 * spec.t_max, 1, 1)
    client.close()


def test_health_service_reports_serving(learner):
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "a3c.v1.Learner"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unreachable_learner_raises_after_timeout():
    client = LearnerClient("127.0.0.1:1", "nobody", rpc_timeout=1, metrics=ActorMetrics(new_registry()))
    with pytest.raises(LearnerUnreachable, match="127.0.0.1:1"):
        client.connect(timeout=0.5)


def _refusals(learner):
    name, shape = learner.model.layout[0]
    t_max = learner.run_spec.t_max
    truncated = zero_gradients(learner)
    truncated[0].data = truncated[0].data[:-3]
    oversized = zero_gradients(learner)
    oversized[0].data = b"\x00" * (learner.run_spec.max_message_bytes + 1)
    return {
        "nan": (dict(gradients=zero_gradients(learner, **{name: torch.full(shape, float("nan"))})),
                grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        "inf": (dict(gradients=zero_gradients(learner, **{name: torch.full(shape, float("inf"))})),
                grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        "wrong_shape": (dict(gradients=zero_gradients(learner, **{name: torch.zeros(3, 3)})),
                        grpc.StatusCode.INVALID_ARGUMENT, "bad_shape"),
        "wrong_dtype": (dict(gradients=zero_gradients(learner, **{name: torch.zeros(shape, dtype=torch.int64)})),
                        grpc.StatusCode.INVALID_ARGUMENT, "bad_dtype"),
        "missing_tensor": (dict(gradients=zero_gradients(learner)[1:]), grpc.StatusCode.INVALID_ARGUMENT,
                           "missing_tensor"),
        "extra_tensor": (dict(gradients=zero_gradients(learner) + [codec.encode("extra", torch.zeros(1))]),
                         grpc.StatusCode.INVALID_ARGUMENT, "unknown_tensor"),
        "truncated_bytes": (dict(gradients=truncated), grpc.StatusCode.INVALID_ARGUMENT, "bad_size"),
        "future_version": (dict(gradients=zero_gradients(learner), base_version=5), grpc.StatusCode.FAILED_PRECONDITION,
                           "future_version"),
        "no_actor_id": (dict(gradients=zero_gradients(learner), actor_id=""), grpc.StatusCode.INVALID_ARGUMENT,
                        "no_actor_id"),
        "nan_return": (dict(gradients=zero_gradients(learner), episode_returns=[float("nan")]),
                       grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        "oversized": (dict(gradients=oversized), grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        # Claims no honest actor can make (CartPole: 20-step rollouts, 1 frame per step, returns up to 500).
        "negative_base_version": (dict(base_version=-1), grpc.StatusCode.INVALID_ARGUMENT, "bad_version"),
        "no_steps": (dict(agent_steps=0, env_frames=0), grpc.StatusCode.INVALID_ARGUMENT, "bad_counts"),
        "partial_rollout": (dict(agent_steps=t_max + 1, env_frames=t_max + 1), grpc.StatusCode.INVALID_ARGUMENT,
                            "bad_counts"),
        "too_many_envs": (dict(agent_steps=t_max * (MAX_NUM_ENVS + 1), env_frames=t_max * (MAX_NUM_ENVS + 1)),
                          grpc.StatusCode.INVALID_ARGUMENT, "bad_counts"),
        "frames_not_steps": (dict(env_frames=10 * t_max), grpc.StatusCode.INVALID_ARGUMENT, "bad_counts"),
        "more_episodes_than_steps": (dict(episode_returns=[1.0] * (t_max + 1)), grpc.StatusCode.INVALID_ARGUMENT,
                                     "bad_returns"),
        "impossible_return": (dict(episode_returns=[501.0]), grpc.StatusCode.INVALID_ARGUMENT, "bad_returns"),
        "nan_loss": (dict(loss=pb.LossStats(value_loss=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT,
                     "non_finite"),
        "negative_entropy": (dict(loss=pb.LossStats(entropy=-1.0)), grpc.StatusCode.INVALID_ARGUMENT, "bad_loss"),
        "nan_scale": (dict(gradients=zero_gradients(learner, **{name: _int8(shape, float("nan"))})),
                      grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        "uneven_scales": (dict(gradients=zero_gradients(learner, **{name: _int8(shape, 1e-3, blocks=7)})),
                          grpc.StatusCode.INVALID_ARGUMENT, "bad_scales"),
    }


def test_the_episode_return_bound_widens_for_an_unusual_environment(start_learner):
    learner = start_learner(max_episode_return=1000.0)
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        reply = pb_grpc.LearnerStub(channel).PushGradients(sound_push(learner, episode_returns=[501.0]), timeout=10)
    assert reply.version == 1 and learner.stats.episodes == 1


def _int8(shape, scale, blocks=1):
    """An int8 gradient of ones with `blocks` copies of `scale` (the codec itself never makes a bad one)."""
    return int8.Quantized(torch.ones(shape, dtype=torch.int8), torch.full((blocks,), scale))


@pytest.mark.parametrize("case", ["nan", "inf", "wrong_shape", "wrong_dtype", "missing_tensor", "extra_tensor",
                                  "truncated_bytes", "future_version", "no_actor_id", "nan_return", "oversized",
                                  "nan_scale", "uneven_scales", "negative_base_version", "no_steps",
                                  "partial_rollout", "too_many_envs", "frames_not_steps", "more_episodes_than_steps",
                                  "impossible_return", "nan_loss", "negative_entropy"])
def test_malformed_push_is_refused_and_changes_nothing(refusing_learner, case):
    learner, stub = refusing_learner  # one learner per serving mode for all the cases: each is refused
    fields, code, reason = _refusals(learner)[case]
    request = sound_push(learner, **{"actor_id": f"bad-{case}", **fields})
    digest, stats, refused = learner.model.digest(), counters(learner), rejections(learner)
    with pytest.raises(grpc.RpcError) as err:
        stub.PushGradients(request, timeout=10)
    assert err.value.code() == code
    assert learner.model.digest() == digest
    assert learner.model.version == 0
    assert counters(learner) == stats  # frames, steps, updates, episodes, the return window, the best mean
    if reason is not None:
        assert reason in err.value.details()
        expect_rejections(learner, {**refused, reason: refused.get(reason, 0) + 1})


def test_replayed_push_is_applied_once(learner, stub):
    request = sound_push(learner, actor_id="a", seq=7, base_version=0)
    assert stub.PushGradients(request, timeout=10).version == 1
    digest = learner.model.digest()
    with pytest.raises(grpc.RpcError) as err:
        stub.PushGradients(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (learner.model.version, learner.model.digest()) == (1, digest)
    expect_rejections(learner, {"duplicate": 1})


def _learner_sample(learner, name: str) -> float:
    return learner.registry.get_sample_value(name)


def test_a_push_whose_deadline_passed_while_it_waited_is_not_applied(learner, stub):
    request = sound_push(learner, actor_id="gone", seq=1, base_version=0)
    with learner.model.lock:  # the learner busy (writing a checkpoint, say) while the caller waits
        call = stub.PushGradients.future(request, timeout=1.5)
        wait_for(lambda: _learner_sample(learner, "a3c_learner_pushes_waiting") == 1, 10, "the push to wait")
        with pytest.raises(grpc.RpcError) as err:
            call.result()
        # Still busy once the learner's side of the call has ended too, as a learner writing a checkpoint would be.
        wait_for(lambda: _learner_sample(learner, "a3c_learner_pushes_abandoned_total") == 1, 10,
                 "the learner to see the call end")
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The actor has dropped that rollout: counting or applying it would make the two disagree.
    expect_rejections(learner, {"cancelled": 1})
    assert learner.model.version == 0 and learner.stats.env_frames == 0


def test_a_push_its_caller_cancelled_while_it_waited_is_not_applied(learner, stub):
    request = sound_push(learner, actor_id="quitter", seq=1, base_version=0)
    with learner.model.lock:
        call = stub.PushGradients.future(request, timeout=30)
        wait_for(lambda: _learner_sample(learner, "a3c_learner_pushes_waiting") == 1, 10, "the push to wait")
        assert call.cancel()
        wait_for(lambda: _learner_sample(learner, "a3c_learner_pushes_abandoned_total") == 1, 10,
                 "the cancel to reach the learner")
    expect_rejections(learner, {"cancelled": 1})
    assert learner.model.version == 0 and learner.stats.env_frames == 0
    # A push that is answered, or refused, is not abandoned.
    stub.PushGradients(sound_push(learner, actor_id="stayer", seq=1, base_version=0), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.PushGradients(sound_push(learner, actor_id="stayer", seq=1, base_version=1), timeout=10)
    assert learner.model.version == 1
    assert _learner_sample(learner, "a3c_learner_pushes_abandoned_total") == 1
    assert _learner_sample(learner, "a3c_learner_pushes_waiting") == 0


@pytest.mark.parametrize("frontends", [0, 2])
def test_too_stale_push_is_refused(start_learner, frontends):
    learner = start_learner(max_staleness=2, frontends=frontends)
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        stub = pb_grpc.LearnerStub(channel)
        for seq in range(1, 4):
            stub.PushGradients(sound_push(learner, actor_id="fast", seq=seq, base_version=seq - 1), timeout=10)
        digest = learner.model.digest()
        with pytest.raises(grpc.RpcError) as err:
            stub.PushGradients(sound_push(learner, actor_id="slow", seq=1, base_version=0), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "stale" in err.value.details()
    assert (learner.model.version, learner.model.digest()) == (3, digest)
    expect_rejections(learner, {"stale": 1})
    # The refused push did not use up its sequence number: sent again on fresh parameters, it is applied.
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        reply = pb_grpc.LearnerStub(channel).PushGradients(sound_push(learner, actor_id="slow", seq=1, base_version=3),
                                                           timeout=10)
    assert reply.version == 4


def test_gradient_from_the_wire_in_float16_is_accepted(learner, stub):
    grads = [codec.encode(n, torch.full(s, 0.001), torch.float16) for n, s in learner.model.layout]
    reply = stub.PushGradients(pb.PushGradientsRequest(actor_id="h", seq=1, base_version=0, gradients=grads,
                                                       **rollout_counts(learner)), timeout=10)
    assert reply.version == 1
    assert np.isfinite(learner.model.params[0].detach().numpy()).all()


@pytest.mark.parametrize("frontends", [0, 2])
def test_int8_wire_pulls_and_pushes_quantized_tensors(start_learner, frontends):
    learner = start_learner(wire_dtype="int8", frontends=frontends)
    client = LearnerClient(f"127.0.0.1:{learner.port}", "q-actor", rpc_timeout=10, metrics=ActorMetrics(new_registry()))
    spec = client.connect(timeout=10)
    assert spec.wire_dtype == pb.INT8
    params = client.get_params(-1)
    for message, p in zip(params.tensors, learner.model.params):
        if p.numel() < int8.QUANTIZE_MIN_VALUES:  # biases and heads go as float16
            assert message.dtype == pb.FLOAT16
            continue
        assert message.dtype == pb.INT8 and len(message.data) == p.numel()
        step = max(message.scales)
        assert torch.allclose(codec.decode(message), p.detach(), atol=step / 2 * 1.001)  # nearest rounding
    assert pb.INT8 in {message.dtype for message in params.tensors}
    before = [p.detach().clone() for p in learner.model.params]
    # A gradient clipped exactly to the clip norm, as actors push them: rounding must not take it over.
    grads = [torch.randn(shape) for _, shape in learner.model.layout]
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    grads = [g * spec.max_grad_norm / norm for g in grads]
    counts = rollout_counts(learner)
    reply = client.push(Push(1, 0, list(zip((n for n, _ in learner.model.layout), grads)), counts["env_frames"],
                             counts["agent_steps"], [], pb.LossStats()))
    assert reply.version == 1
    assert all(not torch.equal(b, p) for b, p in zip(before, learner.model.params))
    expect_rejections(learner, {})
    client.close()
