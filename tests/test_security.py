"""Who may push, and what a push may contain: bearer tokens, TLS, the norm cap, readiness before resume."""

import logging
import subprocess
import threading

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a3c import codec
from a3c.config import LearnerConfig
from a3c.metrics import new_registry
from a3c.reaching import LearnerRefused, LearnerUnreachable
from a3c.tokens import Tokens
from actor.client import LearnerClient
from actor.metrics import ActorMetrics
from learner.service import LearnerService
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import expect_rejections, rollout_counts

TOKEN = "correct-horse-battery-staple"


def push_request(learner, scale: float = 0.0, seq: int = 1) -> pb.PushGradientsRequest:
    grads = [(name, torch.full(shape, scale)) for name, shape in learner.model.layout]
    return pb.PushGradientsRequest(actor_id="t", seq=seq, base_version=learner.model.version,
                                   gradients=codec.encode_all(grads), **rollout_counts(learner))


def client(address: str, token: str = "", **kwargs) -> LearnerClient:
    return LearnerClient(address, "t", rpc_timeout=5, metrics=ActorMetrics(new_registry()), tokens=Tokens(token),
                         **kwargs)


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)])
def test_push_without_the_right_token_is_refused_and_changes_nothing(start_learner, metadata):
    learner = start_learner(auth_token=TOKEN)
    digest = learner.model.digest()
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.LearnerStub(channel).PushGradients(push_request(learner), metadata=metadata, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert learner.model.digest() == digest and learner.model.version == 0
    expect_rejections(learner, {"unauthenticated": 1})


def test_the_right_token_is_let_in_and_health_stays_open(start_learner):
    learner = start_learner(auth_token=TOKEN)
    address = f"127.0.0.1:{learner.port}"
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    good = client(address, TOKEN)
    assert good.connect(timeout=5).env_id == "CartPole-v1"
    assert good.get_params(-1).version == 0
    good.close()
    with pytest.raises(LearnerRefused, match="UNAUTHENTICATED"):
        client(address, "guess").connect(timeout=5)


def test_a_learner_without_a_token_warns_once(start_learner, caplog):
    with caplog.at_level(logging.WARNING, logger="learner"):
        start_learner()
    assert sum("any client" in r.message for r in caplog.records) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


def test_tls_learner_serves_actors_that_trust_its_certificate(start_learner, certificate):
    cert, key = certificate
    learner = start_learner(tls_cert=str(cert), tls_key=str(key))
    trusted = client(f"localhost:{learner.port}", tls_ca=str(cert))
    assert trusted.connect(timeout=10).env_id == "CartPole-v1"
    assert len(trusted.get_params(-1).tensors) == len(learner.model.layout)
    trusted.close()
    with pytest.raises(LearnerUnreachable):  # plaintext never gets through to a TLS port
        client(f"localhost:{learner.port}").connect(timeout=2)


def test_tls_settings_are_checked_up_front(tmp_path):
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        LearnerConfig(tls_cert=__file__)
    with pytest.raises(ValueError, match="cannot read"):
        LearnerConfig(tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "missing.key"))


def test_gradient_above_the_clip_norm_is_refused(learner, stub):
    digest = learner.model.digest()
    with pytest.raises(grpc.RpcError) as err:
        stub.PushGradients(push_request(learner, scale=1.0), timeout=5)  # norm sqrt(4675), clip 0.5
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "huge_norm" in err.value.details()
    assert learner.model.digest() == digest
    expect_rejections(learner, {"huge_norm": 1})
    # Just under the clip norm goes through.
    small = 0.49 / (sum(torch.Size(s).numel() for _, s in learner.model.layout) ** 0.5)
    assert stub.PushGradients(push_request(learner, scale=small, seq=2), timeout=5).version == 1


def test_calls_beyond_the_concurrency_cap_get_resource_exhausted(start_learner):
    learner = start_learner(max_concurrent_rpcs=2, workers=2)
    codes: list = []
    lock = threading.Lock()

    def hammer() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
            stub = pb_grpc.LearnerStub(channel)
            for _ in range(40):
                try:
                    stub.GetParams(pb.GetParamsRequest(actor_id="h", have_version=-1), timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(codes) == 12 * 40  # every call answered, none hung


def test_not_serving_until_resumed(tmp_path):
    service = LearnerService(LearnerConfig(env="CartPole-v1", listen="127.0.0.1:0", metrics_port=0,
                                           checkpoint_dir=str(tmp_path)))
    service.serving.start()  # listening, but start() has not resumed yet
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="a3c.v1.Learner"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.LearnerStub(channel).GetRunSpec(pb.GetRunSpecRequest(actor_id="early"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        service.serving.stop(grace=None)
