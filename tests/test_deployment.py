"""The image, the compose file and the Kubernetes manifests, checked with real tools and rehearsed for real.

There is no Docker engine or cluster here. The rehearsal reads each service's command and environment
straight from docker-compose.yml and from the rendered manifests (plus the image's ENTRYPOINT and ENV from
the Dockerfile), runs them as local processes, and probes them the way Docker and Kubernetes would. What a
container network provides is translated: service host names become 127.0.0.1, container ports become
free local ports (three replicas cannot share one port on one host), and the /data volume becomes a
temporary directory.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from a3c import config
from apps.health import check_http
from a3c.ports import read_ports
from tests.deployment import COMPOSE, POD_MONITOR, compose, image_runtime, manifest, rendered_manifests
from tests.processes import ROOT, metric, stop, tool, wait_for

DOCKERFILES = sorted((ROOT / "deploy").rglob("Dockerfile*"))
K8S_VERSION = "1.32.0"
ACTOR_REPLICAS = 3


# --- the image ----------------------------------------------------------------------------------------

def test_hadolint_passes_on_every_dockerfile():
    assert DOCKERFILES
    for dockerfile in DOCKERFILES:
        result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_non_root_cpu_torch_without_anonymous_volumes():
    # What the image does with these is tested under a real engine in tests/containers.
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert re.search(r"^USER (?!root|0\b)", text, re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert "PYTHONUNBUFFERED=1" in text
    assert not re.search(r"^VOLUME", text, re.MULTILINE)  # every actor container would leave one behind


# --- compose --------------------------------------------------------------------------------------------

def test_compose_file_is_valid_for_docker_compose():
    result = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_keeps_the_actor_scalable():
    services = compose()["services"]
    assert set(services) >= {"learner", "actor", "prometheus", "grafana"}
    actor = services["actor"]
    assert "container_name" not in actor and "ports" not in actor  # fixed names or host ports block --scale
    assert actor["depends_on"]["learner"]["condition"] == "service_healthy"
    # A replica needs only its learner's address and the deployment's credentials, nothing of its own.
    assert set(actor["environment"]) == {"A3C_LEARNER", "A3C_AUTH_TOKEN_FILE", "A3C_TLS_CA"}
    learner = services["learner"]
    assert "container_name" not in learner and any(v.startswith("checkpoints:") for v in learner["volumes"])
    assert "checkpoints" in compose()["volumes"]
    grafana = services["grafana"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"] and services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy" / "grafana" / "dashboards" / Path(home).name).exists()
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def deployed_settings() -> list[tuple[str, str, str]]:
    """(where, variable, value) for every A3C_* variable the compose file and the manifests give a service."""
    found = [(f"compose {name}", key, str(value)) for name, spec in compose()["services"].items()
             for key, value in (spec.get("environment") or {}).items()]
    for deployment in (d for d in rendered_manifests() if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            found += [(f"manifest {deployment['metadata']['name']}", e["name"], e["value"])
                      for e in container.get("env", [])]
    return [setting for setting in found if setting[1].startswith(config.ENV_PREFIX)]


def assert_no_default_restated(settings: list[tuple[str, str, str]]) -> None:
    _, image_env = image_runtime()
    defaults = {config._env_name(f.name): (cls, f.name, image_env.get(config._env_name(f.name), f.default))
                for cls in (config.LearnerConfig, config.ActorConfig, config.EvaluatorConfig)
                for f in dataclasses.fields(cls)}
    for where, variable, value in settings:
        assert variable in defaults, f"{where}: {variable} is no setting of a3c"
        cls, name, default = defaults[variable]
        assert config._parse(config._value_type(cls, name), value, variable) != default, \
            f"{where} restates the default {variable}={value}: leave it to the image"


def test_no_deployment_restates_a_default():
    settings = deployed_settings()
    assert {variable for _, variable, _ in settings} >= {"A3C_LEARNER", "A3C_FRONTENDS"}
    assert_no_default_restated(settings)
    with pytest.raises(AssertionError, match="restates the default A3C_NUM_ENVS"):
        assert_no_default_restated([("compose actor", "A3C_NUM_ENVS", "8")])
    with pytest.raises(AssertionError, match="restates the default A3C_CHECKPOINT_DIR"):  # the image's ENV
        assert_no_default_restated([("manifest learner", "A3C_CHECKPOINT_DIR", "/data/checkpoints")])


# --- Kubernetes -------------------------------------------------------------------------------------------

def test_manifests_render_and_validate_against_the_kubernetes_schemas():
    docs = rendered_manifests()
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_validation_can_fail():
    broken = manifest(rendered_manifests(), "Deployment", "actor")
    broken["spec"]["replicas"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_manifests_are_production_shaped():
    docs = rendered_manifests()
    learner, actor = manifest(docs, "Deployment", "learner"), manifest(docs, "Deployment", "actor")
    evaluator = manifest(docs, "Deployment", "evaluator")
    assert evaluator["spec"]["replicas"] == 1 and evaluator["spec"]["strategy"]["type"] == "Recreate"
    assert learner["spec"]["replicas"] == 1 and learner["spec"]["strategy"]["type"] == "Recreate"
    assert actor["spec"]["replicas"] == 8
    service = manifest(docs, "Service", "learner")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    volumes = learner["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "learner-checkpoints" for v in volumes)
    learner_container = learner["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # over TLS, which the kubelet cannot speak
        command = learner_container[probe]["exec"]["command"]
        assert command[:3] == ["a3c", "health", "--grpc"] and "--tls-ca" in command
    assert learner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    for deployment in (learner, actor, evaluator):
        pod = deployment["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        for container in pod["spec"]["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for deployment in (learner, actor, evaluator):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        # kind and minikube load an image under a tag; `latest` would make the kubelet pull it instead.
        assert container["image"] == f"a3c-grpc:{version}" == compose()["x-a3c"]["image"]
        assert container["imagePullPolicy"] == "IfNotPresent"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:  # a busy learner or actor answers within seconds, not the default one
                assert container[probe]["timeoutSeconds"] >= 5 and container[probe].get("failureThreshold", 3) >= 3
    # The TensorBoard sidecar runs what the compose file's tensorboard service runs (which the container tests run
    # for real), on the learner's volume, read-only.
    sidecar = next(c for c in learner["spec"]["template"]["spec"]["containers"] if c["name"] == "tensorboard")
    service = compose()["services"]["tensorboard"]
    assert sidecar["command"] + sidecar["args"] == service["entrypoint"] + service["command"]
    assert [m for m in sidecar["volumeMounts"] if m["name"] == "checkpoints"] == [
        {"name": "checkpoints", "mountPath": "/data", "readOnly": True}]
    assert {"name": "A3C_TENSORBOARD", "value": "/data/tensorboard"} in learner_container["env"]
    for name in ("learner-checkpoints", "evaluator-output"):
        claim = manifest(docs, "PersistentVolumeClaim", name)["spec"]
        assert claim["accessModes"] == ["ReadWriteOnce"] and claim["volumeMode"] == "Filesystem"
    budget = manifest(docs, "PodDisruptionBudget", "actor")["spec"]
    assert budget["selector"]["matchLabels"] == actor["spec"]["selector"]["matchLabels"] and budget["maxUnavailable"]
    dashboard = manifest(docs, "ConfigMap", "a3c-grafana-dashboard")
    shipped = (ROOT / "deploy" / "grafana" / "dashboards" / "a3c-training.json").read_text()
    assert dashboard["data"]["a3c-training.json"] == shipped


def test_every_service_runs_with_its_own_credentials_from_secrets_nobody_commits():
    docs = rendered_manifests()
    assert not [d for d in docs if d["kind"] == "Secret"]  # made per deployment by `a3c credentials`
    wanted = {"learner": ("a3c-learner-credentials", {"A3C_AUTH_TOKEN_FILE", "A3C_TLS_CERT", "A3C_TLS_KEY"}),
              "actor": ("a3c-actor-credentials", {"A3C_AUTH_TOKEN_FILE", "A3C_TLS_CA"}),
              "evaluator": ("a3c-actor-credentials", {"A3C_AUTH_TOKEN_FILE", "A3C_TLS_CA"})}
    for name, (secret, variables) in wanted.items():
        pod = manifest(docs, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret)
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] and "subPath" not in mount  # subPath mounts never see a rotated Secret
        assert volume["secret"]["defaultMode"] & 0o007 == 0 and pod["securityContext"]["fsGroup"] == 10001
        env = {e["name"]: e["value"] for e in container["env"]}
        assert variables <= env.keys() and all(env[v].startswith(mount["mountPath"] + "/") for v in variables)
    services = compose()["services"]
    for client in ("actor", "evaluator"):
        assert "A3C_TLS_KEY" not in services[client]["environment"]
        assert not {v.split(":")[0] for v in services[client]["volumes"]} & {"ca", "learner-credentials"}
    assert all(not v.endswith(":ro") for v in services["credentials"]["volumes"])
    assert all(v.endswith(":ro") for name in ("actor", "evaluator", "learner") for v in services[name]["volumes"]
               if "credentials" in v)


def test_only_actors_and_the_evaluator_reach_the_learner_and_only_prometheus_the_metrics():
    docs = rendered_manifests()
    pods = {name: manifest(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
            for name in ("learner", "actor", "evaluator")}

    def admitted(policy: dict, labels: dict, port: str) -> bool:
        """Whether an ingress rule of `policy` lets a pod with `labels` (in any namespace) reach `port`."""
        return any(any(all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
                       for peer in rule["from"]) and any(p["port"] == port for p in rule["ports"])
                   for rule in policy["spec"]["ingress"])

    prometheus = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app.kubernetes.io/name": "something-else"}
    for name, ports in (("learner", ("grpc", "metrics")), ("actor", ("metrics",)), ("evaluator", ("metrics",))):
        policy = manifest(docs, "NetworkPolicy", name)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods[name].items()
        assert admitted(policy, prometheus, "metrics") and not admitted(policy, stranger, "metrics")
        assert admitted(policy, pods["actor"], "grpc") == admitted(policy, pods["evaluator"], "grpc") == \
            (name == "learner")
        assert not admitted(policy, prometheus, "grpc") and not admitted(policy, stranger, "grpc")
        container_ports = {p["name"] for p in manifest(docs, "Deployment", name)["spec"]["template"]["spec"]
                           ["containers"][0]["ports"]}
        assert set(ports) == container_ports


def test_pod_monitor_names_jobs_as_the_dashboard_filters():
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    docs = rendered_manifests()
    for name in ("learner", "actor", "evaluator"):
        pod = manifest(docs, "Deployment", name)["spec"]["template"]
        assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == name  # the job label becomes its name
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert monitor["metadata"]["namespace"] == manifest(docs, "Namespace", "a3c")["metadata"]["name"]


# --- the rehearsal ------------------------------------------------------------------------------------------

@dataclass
class Service:
    """One container's process, as the compose file or a manifest describes it."""

    argv: list[str]
    env: dict[str, str]


def localize(service: Service, learner_grpc: int, mounts: dict[str, Path], port_file: Path) -> tuple[list[str],
                                                                                                   dict[str, str]]:
    """Run a container's command here: learner host names to 127.0.0.1, the learner's gRPC port to the one it got
    here, the ports a container serves on to 0 (a container has its ports to itself; processes on one host share
    them), reported back in `port_file`, and paths inside `mounts` (a container path -> a local directory)."""
    argv = [*image_runtime()[0], *service.argv]
    assert argv[:3] == ["tini", "--", "a3c"]  # tini only hands signals on; here the process is no PID 1
    translate = translator({50051: learner_grpc, 9400: 0, 9401: 0, 9402: 0}, mounts)
    env = {**os.environ, **{k: translate(v) for k, v in image_runtime()[1].items() if k != "PATH"}}
    env.update({k: translate(v) for k, v in service.env.items()})
    env.setdefault("A3C_METRICS_PORT", "0")
    env["A3C_PORT_FILE"] = str(port_file)
    if argv[3] == "learner":
        env.setdefault("A3C_LISTEN", "127.0.0.1:0")
    return [sys.executable, "-m", "apps", *[translate(a) for a in argv[3:]]], env


def translator(ports: dict[int, int], mounts: dict[str, Path]):
    def translate(value: str) -> str:
        value = re.sub(r"^(?:learner|0\.0\.0\.0)(?=:\d+$)", "127.0.0.1", value)
        value = re.sub(r"(?<![\w.])(\d{2,5})$", lambda m: str(ports.get(int(m.group(1)), m.group(1))), value)
        for inside, here in mounts.items():
            if value == inside or value.startswith(inside + "/"):
                return str(here) + value[len(inside):]
        return value
    return translate


def rehearse(learner: Service, actors: list[Service], evaluator: Service, learner_probe, actor_probe,
             evaluator_probe, tmp_path: Path, mounts: dict[str, Path]) -> None:
    data = mounts["/data"]
    processes = []
    try:
        argv, env = localize(learner, 0, mounts, tmp_path / "learner.ports")
        learner_log = open(tmp_path / "learner.log", "w")
        processes.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=learner_log, stderr=learner_log))
        ports = wait_for(lambda: read_ports(tmp_path / "learner.ports"), 90, "the learner to serve",
                         tuple(processes))
        grpc_port, metrics_port = ports["grpc"], ports["metrics"]
        wait_for(lambda: learner_probe(grpc_port), 30, "the learner's health check", tuple(processes))
        actor_port_files = [tmp_path / f"actor-{index}.ports" for index in range(len(actors))]
        for actor, port_file in zip(actors, actor_port_files):
            argv, env = localize(actor, grpc_port, mounts, port_file)
            processes.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        wait_for(lambda: metric(metrics_port, "a3c_learner_actors_active") == len(actors), 120,
                 "every actor to push", tuple(processes))
        version = metric(metrics_port, "a3c_learner_param_version")
        wait_for(lambda: metric(metrics_port, "a3c_learner_param_version") >= version + 10, 60,
                 "the version to climb", tuple(processes))
        for port_file in actor_port_files:
            port = read_ports(port_file)["metrics"]
            wait_for(lambda: actor_probe(port), 30, "the actor's health check", tuple(processes))
        # Nothing gets in without the deployment's token, over TLS as the actors connect.
        assert unauthenticated_call(grpc_port, learner, mounts) == "UNAUTHENTICATED"
        # The evaluator reaches the learner with the actors' credentials (its first Pong round would take long).
        # The actors have shown what they do: stopped, so that the evaluator (niced) is not starved starting.
        stop(*processes[1:])
        argv, env = localize(evaluator, grpc_port, mounts, tmp_path / "evaluator.ports")
        evaluator_log = open(tmp_path / "evaluator.log", "w")
        processes.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=evaluator_log, stderr=evaluator_log))
        running = (processes[0], processes[-1])
        port = wait_for(lambda: read_ports(tmp_path / "evaluator.ports"), 60, "the evaluator's metrics",
                        running)["metrics"]
        wait_for(lambda: "evaluating PongNoFrameskip-v4 on" in (tmp_path / "evaluator.log").read_text(), 60,
                 "the evaluator to connect", running)
        assert evaluator_probe(port)
    finally:
        stop(*processes)
    # SIGTERM gave the learner its final checkpoint, in the volume.
    assert processes[0].returncode == 0, (tmp_path / "learner.log").read_text()[-2000:]
    assert (data / "checkpoints" / "latest.pt").exists()
    log = (tmp_path / "learner.log").read_text()
    assert "no --auth-token-file" not in log and "clear text" not in log


def unauthenticated_call(grpc_port: int, learner: Service, mounts: dict[str, Path]) -> str:
    """The status a client without a token gets from the learner (trusting its CA, like an actor)."""
    import grpc

    from proto import a3c_pb2, a3c_pb2_grpc

    translate = translator({}, mounts)
    ca = Path(translate(learner.env["A3C_TLS_CERT"])).parent / "ca.crt"
    with grpc.secure_channel(f"localhost:{grpc_port}", grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
        try:
            a3c_pb2_grpc.LearnerStub(channel).GetRunSpec(a3c_pb2.GetRunSpecRequest(actor_id="x"), timeout=10)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def run_probe(command: list[str], ports: dict[int, int], mounts: dict[str, Path]) -> bool:
    """A health check's command (an `a3c ...` argv), run here with ports and paths translated."""
    translate = translator(ports, mounts)
    argv = [re.sub(r"(?<=:)(\d+)(?=$|/)", lambda m: str(ports.get(int(m.group(1)), m.group(1))), translate(a))
            for a in command]
    assert argv[0] == "a3c"
    return subprocess.run([sys.executable, "-m", "apps", *argv[1:]], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
def test_rehearse_docker_compose(tmp_path):
    services = compose()["services"]
    mounts = {"/data": tmp_path / "data", "/credentials": tmp_path / "credentials"}
    mounts["/data"].mkdir()

    def service(name: str) -> Service:
        spec = services[name]
        return Service(argv=list(spec["command"]), env={k: str(v) for k, v in spec.get("environment", {}).items()})

    # The one-shot credentials service runs first, as the learner's depends_on has it.
    assert services["learner"]["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
    argv, env = localize(service("credentials"), 0, mounts, tmp_path / "unused.ports")
    made = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    learner = service("learner")
    actors = [service("actor") for _ in range(ACTOR_REPLICAS)]

    def check(name: str, ports: dict[int, int]) -> bool:
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        return run_probe(test[1:], ports, mounts)

    rehearse(learner, actors, service("evaluator"), learner_probe=lambda grpc: check("learner", {50051: grpc}),
             actor_probe=lambda port: check("actor", {9401: port}),
             evaluator_probe=lambda port: check("evaluator", {9402: port}), tmp_path=tmp_path, mounts=mounts)


@pytest.mark.slow
def test_rehearse_kubernetes_manifests(tmp_path):
    docs = rendered_manifests()
    mounts = {"/data": tmp_path / "data", "/credentials": tmp_path / "credentials"}
    mounts["/data"].mkdir()
    # The Secrets as `a3c credentials --kubernetes-secrets` makes them, their files laid out as the kubelet mounts
    # them: each key a file in the directory of the volume that names the Secret.
    made = subprocess.run([sys.executable, "-m", "apps", "credentials", str(tmp_path / "made"),
                           "--kubernetes-secrets"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    secrets = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(made.stdout)}

    def service(name: str) -> tuple[Service, dict]:
        pod = manifest(docs, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in container["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret:
                folder = translator({}, mounts)(mount["mountPath"])
                Path(folder).mkdir(parents=True, exist_ok=True)
                for key, value in secrets[secret["secretName"]]["data"].items():
                    (Path(folder) / key).write_bytes(base64.b64decode(value))
        return Service(argv=list(container["args"]), env={e["name"]: e["value"] for e in container["env"]}), container

    learner, learner_container = service("learner")
    actors = [service("actor")[0] for _ in range(ACTOR_REPLICAS)]
    actor_container = service("actor")[1]
    evaluator, evaluator_container = service("evaluator")
    liveness = actor_container["livenessProbe"]["httpGet"]
    assert liveness["port"] == "metrics" == evaluator_container["livenessProbe"]["httpGet"]["port"]

    def learner_probe(grpc_port: int) -> bool:
        return all(run_probe(learner_container[probe]["exec"]["command"], {50051: grpc_port}, mounts)
                   for probe in ("startupProbe", "readinessProbe", "livenessProbe"))

    def actor_probe(port: int) -> bool:
        check_http(f"http://127.0.0.1:{port}{liveness['path']}", timeout=3)
        return True

    rehearse(learner, actors, evaluator, learner_probe, actor_probe, actor_probe, tmp_path, mounts)
