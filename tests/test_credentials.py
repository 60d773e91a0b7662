"""Secure by default: `a3c credentials` makes and rotates what a deployment runs with, the learner rereads its
token file, an exposed learner will not start without a token, and health checks work with TLS on."""

import subprocess
import sys
import threading

import grpc
import kubernetes_validate
import pytest
import yaml

from a3c.config import ActorConfig, ConfigError, LearnerConfig
from a3c.metrics import new_registry
from a3c.reaching import LearnerRefused
from a3c.tokens import Tokens, parse_tokens
from actor.client import LearnerClient
from actor.metrics import ActorMetrics
from actor.service import Actor
from apps import credentials
from apps.health import check_grpc
from learner.auth import accepted
from a3c.errors import UserFacingError
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc
from tests.processes import wait_for

HOSTS = ["localhost", "127.0.0.1"]


def a3c(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def made(tmp_path):
    root = tmp_path / "credentials"
    credentials.ensure(root, HOSTS)
    return root


def tokens_of(path) -> tuple[str, ...]:
    return parse_tokens(path.read_text())


def get_spec(port: int, token: str, ca: str | None = None) -> grpc.StatusCode:
    """The status a GetRunSpec call presenting `token` gets."""
    target = f"localhost:{port}"
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(open(ca, "rb").read())) if ca
               else grpc.insecure_channel(target))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with channel:
        try:
            pb_grpc.LearnerStub(channel).GetRunSpec(pb.GetRunSpecRequest(actor_id="t"), metadata=metadata, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


# --- the helper ---------------------------------------------------------------------------------------------

def test_the_helper_issues_a_certificate_openssl_verifies_for_the_hosts_asked(made):
    learner = made / "learner"
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(made / "ca" / "ca.crt"), str(learner / "tls.crt")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(learner / "tls.crt")],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert (learner / "ca.crt").read_bytes() == (made / "actor" / "ca.crt").read_bytes() == \
        (made / "ca" / "ca.crt").read_bytes()
    assert tokens_of(learner / "tokens") == tokens_of(made / "actor" / "tokens")
    assert not (made / "actor" / "tls.key").exists() and not (made / "actor" / "ca.key").exists()
    assert all(p.stat().st_mode & 0o077 == 0 for p in made.rglob("*") if p.is_file())


def test_the_helper_keeps_what_is_valid_and_reissues_for_new_hosts(made):
    before = {p: p.read_bytes() for p in made.rglob("*") if p.is_file()}
    assert credentials.ensure(made, HOSTS) == []
    assert before == {p: p.read_bytes() for p in made.rglob("*") if p.is_file()}
    changes = credentials.ensure(made, [*HOSTS, "learner.example"])
    assert len(changes) == 1 and "learner.example" in changes[0]
    assert (made / "ca" / "ca.key").read_bytes() == before[made / "ca" / "ca.key"]
    assert (made / "learner" / "tls.crt").read_bytes() != before[made / "learner" / "tls.crt"]


def test_rotation_adds_before_actors_present_and_retires_only_on_request(made, monkeypatch):
    written = []
    write = credentials.write_tokens
    monkeypatch.setattr(credentials, "write_tokens", lambda path, tokens: (written.append(path.parent.name),
                                                                           write(path, tokens)))
    old = tokens_of(made / "actor" / "tokens")
    credentials.ensure(made, HOSTS, rotate_token=True)
    both = tokens_of(made / "actor" / "tokens")
    assert len(both) == 2 and both[1:] == old and tokens_of(made / "learner" / "tokens") == both
    assert written == ["learner", "actor"]  # the learner knows the new token before an actor presents it
    written.clear()
    assert credentials.ensure(made, HOSTS) == [] and written == []  # nothing retired unasked
    credentials.ensure(made, HOSTS, retire_old_tokens=True)
    assert tokens_of(made / "learner" / "tokens") == both[:1] == tokens_of(made / "actor" / "tokens")
    assert written == ["learner", "actor"]


def test_the_helper_prints_secrets_that_validate_against_kubernetes(made):
    result = a3c("credentials", str(made), "--hosts", ",".join(HOSTS), "--kubernetes-secrets")
    assert result.returncode == 0, result.stderr
    secrets = list(yaml.safe_load_all(result.stdout))
    assert {s["metadata"]["name"] for s in secrets} == set(credentials.SECRET_NAMES.values())
    for secret in secrets:
        kubernetes_validate.validate(secret, "1.32.0", strict=True)
    actor = next(s for s in secrets if s["metadata"]["name"] == credentials.SECRET_NAMES["actor"])
    assert set(actor["data"]) == {"ca.crt", "tokens"}  # never the learner's key


def test_rotating_and_retiring_together_is_one_line_error(made):
    result = a3c("credentials", str(made), "--rotate-token", "--retire-old-tokens")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "two steps" in result.stderr


# --- tokens from a file ------------------------------------------------------------------------------------

def test_a_token_file_is_reread_when_replaced_and_survives_a_botched_rewrite(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# accepted\nfirst\n\nsecond\n")
    now = [0.0]
    tokens = Tokens(path=str(path), clock=lambda: now[0])
    assert tokens.current() == ("first", "second")
    credentials.write_tokens(path, ["third"])
    assert tokens.current() == ("first", "second")  # looked at no more than once a second...
    assert tokens.current(look_now=True) == ("third",)  # ...unless asked to (after a refusal)
    credentials.write_tokens(path, ["fourth"])
    now[0] += 1.0
    assert tokens.current() == ("fourth",)
    path.write_text("")  # emptied by mistake: nobody is locked out
    now[0] += 1.0
    assert tokens.current() == ("fourth",)
    path.unlink()
    now[0] += 1.0
    assert tokens.current() == ("fourth",)
    credentials.write_tokens(path, ["fifth"])
    now[0] += 1.0
    assert tokens.current() == ("fifth",)


def test_the_learner_looks_at_its_token_file_at_once_when_a_token_misses(tmp_path):
    path = tmp_path / "tokens"
    credentials.write_tokens(path, ["old"])
    tokens = Tokens(path=str(path), clock=lambda: 0.0)  # the second never passes
    assert accepted("Bearer old", tokens) and not accepted("Bearer new", tokens)
    credentials.write_tokens(path, ["new", "old"])
    assert accepted("Bearer new", tokens) and accepted("Bearer old", tokens)
    assert not accepted("new", tokens) and not accepted("", tokens)


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("# none\n\n", "holds no token")])
def test_a_missing_or_empty_token_file_is_a_one_line_error_at_start(tmp_path, content, message):
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    for service in ("learner", "actor"):
        result = a3c(service, "--auth-token-file", str(path), "--listen" if service == "learner" else "--learner",
                     "127.0.0.1:0" if service == "learner" else "127.0.0.1:1")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr and "--auth-token-file" in result.stderr


def test_a_learner_reachable_from_other_machines_needs_a_token(tmp_path):
    result = a3c("learner", "--listen", "0.0.0.0:0", "--env", "CartPole-v1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--auth-token-file" in result.stderr, result.stderr
    for listen in ("0.0.0.0:0", "learner:50051", "[::]:0"):
        with pytest.raises(ConfigError, match="allow-unauthenticated"):
            LearnerConfig(listen=listen).require_token_if_exposed()
    LearnerConfig(listen="0.0.0.0:0", allow_unauthenticated=True).require_token_if_exposed()
    LearnerConfig(listen="[::1]:0").require_token_if_exposed()
    with pytest.raises(ConfigError, match="exclude each other"):
        ActorConfig(auth_token="x", auth_token_file=__file__)


def rejected_unauthenticated(learner) -> float:
    return learner.registry.get_sample_value("a3c_learner_gradients_rejected_total", {"reason": "unauthenticated"})


def run_actor(learner, token_file):
    stop = threading.Event()
    actor = Actor(ActorConfig(learner=f"127.0.0.1:{learner.port}", num_envs=2, connect_timeout=10, metrics_port=0,
                              auth_token_file=str(token_file)), stop)
    thread = threading.Thread(target=actor.run)
    thread.start()
    return stop, thread


def trains_on(learner, thread, what: str, updates: int = 5) -> None:
    reached = learner.model.version + updates
    wait_for(lambda: learner.model.version >= reached or not thread.is_alive(), 30, f"training to go on {what}")
    assert thread.is_alive(), f"the actor gave up {what}"


def test_tokens_rotate_without_a_restart(start_learner, made):
    learner = start_learner(auth_token_file=str(made / "learner" / "tokens"))
    stop, thread = run_actor(learner, made / "actor" / "tokens")
    try:
        trains_on(learner, thread, "with the first token")
        old = tokens_of(made / "actor" / "tokens")[0]
        credentials.ensure(made, HOSTS, rotate_token=True)
        new = tokens_of(made / "actor" / "tokens")[0]
        assert get_spec(learner.port, new) == get_spec(learner.port, old) == grpc.StatusCode.OK
        trains_on(learner, thread, "after the rotation")
        credentials.ensure(made, HOSTS, retire_old_tokens=True)
        wait_for(lambda: get_spec(learner.port, old) == grpc.StatusCode.UNAUTHENTICATED, 10,
                 "the learner to refuse the retired token")
        trains_on(learner, thread, "after the old token was retired")
        assert rejected_unauthenticated(learner) == 0  # the learner always knew a token before the actor used it
    finally:
        stop.set()
        thread.join(timeout=15)
    with pytest.raises(LearnerRefused, match="UNAUTHENTICATED"):
        LearnerClient(f"127.0.0.1:{learner.port}", "old", rpc_timeout=5, metrics=ActorMetrics(new_registry()),
                      tokens=Tokens(old)).connect(timeout=5)


def test_an_actor_trains_through_a_rotation_that_reaches_it_before_the_learner(start_learner, tmp_path):
    """The Kubernetes order: the kubelet may refresh an actor's Secret before the learner's, both ways round."""
    learner_file, actor_file = tmp_path / "learner-tokens", tmp_path / "actor-tokens"
    for path in (learner_file, actor_file):
        credentials.write_tokens(path, ["old"])
    learner = start_learner(auth_token_file=str(learner_file))
    stop, thread = run_actor(learner, actor_file)
    try:
        trains_on(learner, thread, "with the first token")
        credentials.write_tokens(actor_file, ["new", "old"])  # rotated: the actor hears first
        wait_for(lambda: rejected_unauthenticated(learner) >= 1, 10, "the actor to present the new token")
        trains_on(learner, thread, "on the old token while the learner lags")
        credentials.write_tokens(learner_file, ["new", "old"])
        credentials.write_tokens(learner_file, ["new"])  # retired: the learner hears first
        wait_for(lambda: get_spec(learner.port, "old") == grpc.StatusCode.UNAUTHENTICATED, 10,
                 "the learner to refuse the old token")
        trains_on(learner, thread, "on the new token while the actor lags")
        credentials.write_tokens(actor_file, ["new"])
        trains_on(learner, thread, "once both agree")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_an_actor_connects_with_the_older_token_while_the_learner_lacks_the_newer(start_learner, tmp_path):
    token_file = tmp_path / "tokens"
    credentials.write_tokens(token_file, ["new", "old"])
    learner = start_learner(auth_token="old")
    client = LearnerClient(f"127.0.0.1:{learner.port}", "a", rpc_timeout=5, metrics=ActorMetrics(new_registry()),
                           tokens=Tokens(path=str(token_file)))
    assert client.connect(timeout=10).env_id == "CartPole-v1"
    assert client.get_params(-1).version == 0
    client.close()


def test_an_actor_whose_every_token_is_refused_stops_with_one_line(start_learner, tmp_path):
    token_file = tmp_path / "tokens"
    credentials.write_tokens(token_file, ["wrong", "also-wrong"])
    learner = start_learner(auth_token="right")
    with pytest.raises(LearnerRefused, match="UNAUTHENTICATED"):
        Actor(ActorConfig(learner=f"127.0.0.1:{learner.port}", num_envs=1, connect_timeout=10, metrics_port=0,
                          auth_token_file=str(token_file)), threading.Event()).run()


# --- TLS and health checks ---------------------------------------------------------------------------------

def test_health_checks_and_actors_work_with_tls_and_a_token_on(start_learner, made, tmp_path):
    learner_dir = made / "learner"
    learner = start_learner(auth_token_file=str(learner_dir / "tokens"), tls_cert=str(learner_dir / "tls.crt"),
                            tls_key=str(learner_dir / "tls.key"))
    ca = str(made / "actor" / "ca.crt")
    token = tokens_of(made / "actor" / "tokens")[0]
    assert get_spec(learner.port, token, ca) == grpc.StatusCode.OK
    assert get_spec(learner.port, "", ca) == grpc.StatusCode.UNAUTHENTICATED
    for address in (f"127.0.0.1:{learner.port}", f"localhost:{learner.port}"):
        result = a3c("health", "--grpc", address, "--tls-ca", str(learner_dir / "ca.crt"))
        assert result.returncode == 0, result.stderr
    plain = a3c("health", "--grpc", f"127.0.0.1:{learner.port}", "--timeout", "2")
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1
    other = tmp_path / "other"
    credentials.ensure(other, HOSTS)  # another deployment's CA is not trusted
    with pytest.raises(UserFacingError, match="UNAVAILABLE"):
        check_grpc(f"localhost:{learner.port}", "", 2, str(other / "ca" / "ca.crt"))
    missing = a3c("health", "--grpc", f"127.0.0.1:{learner.port}", "--tls-ca", str(tmp_path / "none.crt"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and missing.stderr.count("\n") == 1
