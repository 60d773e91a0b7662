"""The wire fuzzed (hypothesis): sound requests of every RPC, mutated field by field and as bytes, sent through a
generic channel to a live learner, served alone and through fronts. The promises: OK only for a push whose
claims an honest actor could make; otherwise a specific status, never UNKNOWN or INTERNAL; nothing changes
unless OK; the learner keeps serving. A3C_FUZZ_EXAMPLES sets the examples per test and serving mode."""

import math
import os

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from a3c import codec, framing
from a3c.config import MAX_NUM_ENVS
from a3c.wire import SERVICE_NAME, channel_options
from proto import a3c_pb2 as pb
from tests.conftest import counters, serving_learner

EXAMPLES = int(os.environ.get("A3C_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Statuses a refusal may carry; UNKNOWN and INTERNAL would mean the learner failed, not the caller.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_STALENESS = 4
RETURN_BOUND = 500.0  # CartPole-v1's step limit


@pytest.fixture(scope="module", params=[0, 2], ids=["served-alone", "2-frontends"])
def learner(request, tmp_path_factory):
    # refusal_limit 0: the refusal budget has its own tests; here every push is judged on its own.
    with serving_learner(tmp_path_factory.mktemp("fuzz"), frontends=request.param, max_staleness=MAX_STALENESS,
                         refusal_limit=0) as service:
        yield service


@pytest.fixture(scope="module")
def call(learner):
    """Raw bytes to a method of the Learner service, and its status and reply bytes back."""
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}",
                               options=channel_options(learner.run_spec.max_message_bytes)) as channel:
        def send(method: str, payload: bytes) -> tuple[grpc.StatusCode, bytes | None]:
            try:
                return grpc.StatusCode.OK, channel.unary_unary(f"/{SERVICE_NAME}/{method}")(payload, timeout=10)
            except grpc.RpcError as err:
                return err.code(), None
        yield send


def state(learner) -> tuple:
    return learner.model.version, learner.model.digest(), counters(learner)


class Pusher:
    """An honest actor's pushes, which the fuzzer then mutates; remembers the last sequence number the learner took
    from each actor id, so that an unmutated push is always sound."""

    def __init__(self, learner) -> None:
        self.learner = learner
        self.accepted: dict[str, int] = {}
        self.generation = [0] * 4

    def sound_push(self, data: st.DataObject) -> pb.PushGradientsRequest:
        learner, spec = self.learner, self.learner.run_spec
        slot = data.draw(st.integers(0, len(self.generation) - 1), "actor")
        actor_id = f"fuzz-{slot}-{self.generation[slot]}"
        envs = data.draw(st.integers(1, 8), "envs")
        steps = spec.t_max * envs
        scale = spec.max_grad_norm / math.sqrt(learner.model.num_params) * 0.5
        gradients = [(name, torch.full(shape, scale)) for name, shape in learner.model.layout]
        returns = data.draw(st.lists(st.floats(-RETURN_BOUND, RETURN_BOUND), max_size=3), "returns")
        return pb.PushGradientsRequest(
            actor_id=actor_id, seq=self.accepted.get(actor_id, 0) + 1, base_version=learner.model.version,
            gradients=codec.encode_all(gradients, codec.TORCH_DTYPES[spec.wire_dtype]),
            env_frames=steps * spec.frames_per_step, agent_steps=steps, episode_returns=returns,
            loss=pb.LossStats(policy_loss=0.1, value_loss=0.2, entropy=0.6, grad_norm=0.3), want_params=True)

    def took(self, request: pb.PushGradientsRequest) -> None:
        self.accepted[request.actor_id] = request.seq
        if request.seq >= 2**63:  # a fuzzed seq near the top leaves that id no room: the next push takes a new one
            for slot in range(len(self.generation)):
                if request.actor_id == f"fuzz-{slot}-{self.generation[slot]}":
                    self.generation[slot] += 1


int64 = st.integers(-2**63, 2**63 - 1)
floats32 = st.floats(width=32)


def mutate_field(request: pb.PushGradientsRequest, data: st.DataObject) -> None:
    """One field of the push (or one tensor of its gradient) set to an arbitrary value."""
    target = data.draw(st.sampled_from(["actor_id", "seq", "base_version", "env_frames", "agent_steps",
                                        "episode_returns", "loss", "tensor", "tensors"]), "field")
    if target == "actor_id":
        request.actor_id = data.draw(st.text(max_size=12), target)
    elif target == "seq":
        request.seq = data.draw(st.integers(0, 2**64 - 1), target)
    elif target in ("base_version", "env_frames", "agent_steps"):
        setattr(request, target, data.draw(int64, target))
    elif target == "episode_returns":
        request.ClearField(target)
        request.episode_returns.extend(data.draw(st.lists(floats32, max_size=40), target))
    elif target == "loss":
        name = data.draw(st.sampled_from(["policy_loss", "value_loss", "entropy", "grad_norm"]), "loss field")
        setattr(request.loss, name, data.draw(floats32, name))
    elif target == "tensor":
        tensor = request.gradients[data.draw(st.integers(0, len(request.gradients) - 1), "index")]
        part = data.draw(st.sampled_from(["name", "dtype", "shape", "data", "scales"]), "part")
        if part == "name":
            tensor.name = data.draw(st.text(max_size=12), part)
        elif part == "dtype":
            tensor.dtype = data.draw(st.integers(0, 20), part)
        elif part == "shape":
            tensor.ClearField("shape")
            tensor.shape.extend(data.draw(st.lists(st.integers(-2, 70), max_size=4), part))
        elif part == "data":
            cut = round(data.draw(st.floats(0, 1), "cut") * len(tensor.data))
            tensor.data = tensor.data[:cut] + data.draw(st.binary(max_size=16), part)
        else:
            tensor.ClearField("scales")
            tensor.scales.extend(data.draw(st.lists(floats32, max_size=8), part))
    else:
        tensors = list(request.gradients)
        change = data.draw(st.sampled_from(["drop", "duplicate", "swap", "extra"]), "change")
        index = data.draw(st.integers(0, len(tensors) - 1), "index")
        if change == "drop":
            del tensors[index]
        elif change == "duplicate":
            tensors.insert(index, tensors[index])
        elif change == "swap":
            tensors[0], tensors[index] = tensors[index], tensors[0]
        else:
            tensors.append(codec.encode("extra", torch.zeros(2)))
        request.ClearField("gradients")
        request.gradients.extend(tensors)


def mutate_bytes(payload: bytes, data: st.DataObject) -> bytes:
    """The serialized request cut short, with bytes overwritten or inserted, or with an unknown field added."""
    change = data.draw(st.sampled_from(["truncate", "overwrite", "insert", "unknown_field"]), "change")
    # Positions as fractions, so the draws do not depend on the payload's length (the learner's version in it).
    at = round(data.draw(st.floats(0, 1), "at") * len(payload))
    if change == "truncate":
        return payload[:at]
    if change == "overwrite":
        noise = data.draw(st.binary(min_size=1, max_size=8), "noise")
        return payload[:at] + noise + payload[at + len(noise):]
    if change == "insert":
        return payload[:at] + data.draw(st.binary(min_size=1, max_size=8), "noise") + payload[at:]
    blob = data.draw(st.binary(max_size=16), "unknown field")
    return payload + framing.tag_and_length(data.draw(st.integers(100, 10_000), "field number"), len(blob)) + blob


def plausible(learner, request: pb.PushGradientsRequest, last_seq: int | None, version: int) -> list[str]:
    """What is wrong with a push the learner accepted, by the documented rules (docs/operations.md)."""
    spec, wrong = learner.run_spec, []
    if not request.actor_id:
        wrong.append("no actor id")
    if last_seq is not None and request.seq <= last_seq:
        wrong.append("a replayed seq")
    if not 0 <= version - request.base_version <= MAX_STALENESS:
        wrong.append(f"base version {request.base_version} against {version}")
    steps = request.agent_steps
    if not (spec.t_max <= steps <= spec.t_max * MAX_NUM_ENVS and steps % spec.t_max == 0):
        wrong.append(f"{steps} agent steps")
    if request.env_frames != steps * spec.frames_per_step:
        wrong.append(f"{request.env_frames} frames")
    returns = list(request.episode_returns)
    if len(returns) > steps or not all(math.isfinite(r) and abs(r) <= RETURN_BOUND for r in returns):
        wrong.append(f"returns {returns}")
    loss = request.loss
    if not all(math.isfinite(v) for v in (loss.policy_loss, loss.value_loss, loss.entropy, loss.grad_norm)):
        wrong.append("loss not finite")
    if [(t.name, tuple(t.shape)) for t in request.gradients] != [(n, tuple(s)) for n, s in learner.model.layout]:
        wrong.append("tensors not the model's")
    return wrong


@FUZZ
@given(data=st.data())
def test_fuzzed_pushes_are_applied_only_when_sound_and_refused_cleanly_otherwise(learner, call, data):
    pusher = getattr(learner, "fuzz_pusher", None) or Pusher(learner)
    learner.fuzz_pusher = pusher
    request = pusher.sound_push(data)
    how = data.draw(st.sampled_from(["sound", "field", "bytes"]), "mutation")
    if how == "field":
        mutate_field(request, data)
    payload = request.SerializeToString()
    if how == "bytes":
        payload = mutate_bytes(payload, data)
    before = state(learner)
    code, reply = call("PushGradients", payload)
    if code == grpc.StatusCode.OK:
        sent = pb.PushGradientsRequest.FromString(payload)
        assert not plausible(learner, sent, pusher.accepted.get(sent.actor_id), before[0]), sent
        assert learner.model.version == before[0] + 1
        assert pb.PushGradientsResponse.FromString(reply).version == before[0] + 1
        pusher.took(sent)
    else:
        assert code in REFUSALS, code
        assert state(learner) == before
        assert how != "sound", code  # an honest push is never refused here
    assert call("GetRunSpec", b"")[0] == grpc.StatusCode.OK  # still serving


@FUZZ
@given(have_version=int64, actor_id=st.text(max_size=12), corrupt=st.booleans(), data=st.data())
def test_fuzzed_pulls_answer_or_refuse_and_change_nothing(learner, call, have_version, actor_id, corrupt, data):
    for method, message in (("GetParams", pb.GetParamsRequest(actor_id=actor_id, have_version=have_version)),
                            ("GetRunSpec", pb.GetRunSpecRequest(actor_id=actor_id))):
        payload = message.SerializeToString()
        if corrupt:
            payload = mutate_bytes(payload, data)
        before = state(learner)
        code, reply = call(method, payload)
        assert code == grpc.StatusCode.OK or code == grpc.StatusCode.INVALID_ARGUMENT, (method, code)
        assert state(learner) == before
        if code == grpc.StatusCode.OK and method == "GetParams":
            params = pb.Params.FromString(reply)
            assert params.version == learner.model.version
            sent = pb.GetParamsRequest.FromString(payload)
            assert bool(params.tensors) == (sent.have_version != params.version)
