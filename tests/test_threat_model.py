"""The statements of docs/security.md that no other test makes: what an outsider and a compromised actor can and
cannot do to a learner that requires a token."""

import logging

import grpc
import pytest

from a3c.wire import SERVICE_NAME
from proto import a3c_pb2 as pb
from tests.conftest import expect_rejections, sound_push

TOKEN = "the-deployments-token"
AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)


def call(port: int, method: str, request, metadata=None) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary(f"/{SERVICE_NAME}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=lambda b: b)
        try:
            rpc(request, metadata=metadata, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


def test_an_outsider_can_neither_read_the_run_nor_the_parameters_nor_push(start_learner):
    learner = start_learner(auth_token=TOKEN)
    digest = learner.model.digest()
    requests = {"GetRunSpec": pb.GetRunSpecRequest(actor_id="x"),
                "GetParams": pb.GetParamsRequest(actor_id="x", have_version=-1),
                "PushGradients": sound_push(learner),
                "ReportEvaluation": pb.EvaluationReport(evaluator_id="x", version=0, episode_returns=[1.0])}
    for method, request in requests.items():
        assert call(learner.port, method, request) == grpc.StatusCode.UNAUTHENTICATED, method
    assert learner.stats.evaluation["eval_mean_return"] is None
    assert learner.model.digest() == digest and learner.model.version == 0
    expect_rejections(learner, {"unauthenticated": 1})
    # The same calls with the token all go through: the refusals above were the token's doing.
    for method, request in requests.items():
        assert call(learner.port, method, request, AUTHORIZED) == grpc.StatusCode.OK, method


def test_a_learner_reachable_from_other_machines_without_tls_says_the_token_travels_in_clear(start_learner, caplog):
    with caplog.at_level(logging.WARNING, logger="learner"):
        start_learner(auth_token=TOKEN, listen="0.0.0.0:0")
    assert sum("clear text" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("frontends", [0, 2], ids=["alone", "fronts"])
def test_a_compromised_actor_can_cool_down_another_actors_name(start_learner, frontends):
    """Actor names are claims: with the shared token, one actor can spend another's refusal budget (so per-actor
    tokens are the fix the threat model names)."""
    learner = start_learner(auth_token=TOKEN, refusal_limit=2, frontends=frontends)
    impostor = sound_push(learner, actor_id="actor-3/forged", episode_returns=[1e6])
    for _ in range(3):
        assert call(learner.port, "PushGradients", impostor, AUTHORIZED) == grpc.StatusCode.INVALID_ARGUMENT
    victim = sound_push(learner, actor_id="actor-3/4f2a9c")
    assert call(learner.port, "PushGradients", victim, AUTHORIZED) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(learner.port, "PushGradients", sound_push(learner, actor_id="actor-4/000001"),
                AUTHORIZED) == grpc.StatusCode.OK  # every other name trains on


def test_a_compromised_actor_can_report_plausible_returns_that_were_never_played(start_learner):
    """Claims inside the bounds are believed: the return window (and so --stop-at-return and best.pt) follows
    them. An evaluator that plays its own episodes is the answer to this, not more checks."""
    learner = start_learner(auth_token=TOKEN)
    claim = sound_push(learner, episode_returns=[500.0])  # CartPole's best, never played
    assert call(learner.port, "PushGradients", claim, AUTHORIZED) == grpc.StatusCode.OK
    assert learner.stats.state()["returns"] == [500.0]


def test_a_compromised_actor_can_report_an_evaluation_never_played_but_not_choose_best_eval(start_learner, tmp_path):
    """A report within the bounds reaches the progress records (and TensorBoard); best-eval.pt is the evaluator's
    own file, chosen from the episodes it played, which no report can write."""
    learner = start_learner(auth_token=TOKEN)
    report = pb.EvaluationReport(evaluator_id="e", version=0, episode_returns=[500.0] * 10)
    assert call(learner.port, "ReportEvaluation", report, AUTHORIZED) == grpc.StatusCode.OK
    assert learner.report()["eval_mean_return"] == 500.0
    assert not list(tmp_path.rglob("best-eval.pt"))


def test_a_compromised_actor_can_mark_another_as_left_only_until_its_next_push(start_learner):
    learner = start_learner(auth_token=TOKEN)
    assert call(learner.port, "PushGradients", sound_push(learner, actor_id="actor-5/aaaaaa"), AUTHORIZED) == \
        grpc.StatusCode.OK
    assert learner.stats.active_actors() == 1
    assert call(learner.port, "Leave", pb.LeaveRequest(actor_id="actor-5/aaaaaa"), AUTHORIZED) == grpc.StatusCode.OK
    assert learner.stats.active_actors() == 0
    assert call(learner.port, "PushGradients", sound_push(learner, actor_id="actor-5/aaaaaa", seq=2, base_version=1),
                AUTHORIZED) == grpc.StatusCode.OK
    assert learner.stats.active_actors() == 1
    assert call(learner.port, "Leave", pb.LeaveRequest(actor_id="x")) == grpc.StatusCode.UNAUTHENTICATED
