"""The container tests' plumbing: the image built with the Docker SDK, the compose project driven by the compose
command (v2 `docker compose` where it exists, else v1 `docker-compose`; the Docker SDK has no compose), and the
containers, their health and their /metrics read back through the SDK on the project's bridge network."""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from tests.dashboard import prometheus_query
from tests.deployment import COMPOSE, compose
from tests.processes import ROOT, http_get, parse_metric

IMAGE = compose()["x-a3c"]["image"]  # the image the compose file runs
DOCKERFILE = "deploy/Dockerfile"
PROMETHEUS = "127.0.0.1:9090"  # where the compose file publishes it
REPORT: dict[str, str] = {}  # what the run measured, printed at its end
# The Dockerfile and what its COPY lines take from the context: a build from a copy of these is the same build as
# from the repository.
BUILD_INPUTS = (DOCKERFILE, *re.findall(r"^COPY (?!--)(\S+) ", (ROOT / DOCKERFILE).read_text(), re.MULTILINE))


def client() -> docker.DockerClient:
    try:
        engine = docker.from_env(timeout=300)
        engine.ping()
    except docker.errors.DockerException as err:
        raise AssertionError(f"no Docker engine answers ({err}); `docker info` must work for these tests") from None
    return engine


def build(engine: docker.DockerClient, context: Path = ROOT, tag: str | None = IMAGE,
          target: str | None = None) -> tuple[str, float]:
    """Build deploy/Dockerfile from `context`; the image id and the seconds it took. BuildError when it fails."""
    started = time.monotonic()
    image, _log = engine.images.build(path=str(context), dockerfile=DOCKERFILE, tag=tag, target=target, rm=True,
                                      forcerm=True)
    return image.id, time.monotonic() - started


def copy_build_context(destination: Path) -> Path:
    for name in BUILD_INPUTS:
        source, target = ROOT / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(source, target)
    return destination


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    assert found, "neither `docker compose` nor `docker-compose` is installed"
    return [found]


class Stack:
    """One compose project of docker-compose.yml, named so that it cannot touch a user's own."""

    def __init__(self, engine: docker.DockerClient, project: str, extra_files: list[Path] = ()) -> None:
        self.engine = engine
        self.project = project
        self.command = [*compose_command(), "--project-name", project, "--file", str(COMPOSE),
                        *(arg for path in extra_files for arg in ("--file", str(path)))]

    def compose(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([*self.command, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"compose {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    def containers(self, service: str, all: bool = False) -> list[Container]:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
        return self.engine.containers.list(all=all, filters={"label": labels})

    def learner(self) -> Container:
        (learner,) = self.containers("learner", all=True)
        return learner

    def ip(self, container: Container) -> str:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        return next(net["IPAddress"] for net in networks.values() if net["IPAddress"])

    def metric(self, container: Container, port: int, name: str, labels: dict[str, str] | None = None) -> float:
        return parse_metric(http_get(f"http://{self.ip(container)}:{port}/metrics", timeout=10), name, labels)

    def learner_metric(self, name: str) -> float:
        return self.metric(self.learner(), 9400, name)

    def accepted_pushes(self, actor: Container) -> float:
        return self.metric(actor, 9401, "a3c_actor_pushes_total", {"outcome": "accepted"})

    def health(self, container: Container) -> str:
        container.reload()
        return container.attrs["State"].get("Health", {}).get("Status", "none")

    def logs(self, container: Container) -> str:
        return container.logs().decode(errors="replace")

    def volumes(self) -> set[str]:
        return {v.name for v in self.engine.volumes.list(filters={"label": f"com.docker.compose.project={self.project}"})}

    def prometheus_query(self, expr: str) -> list:
        return prometheus_query(PROMETHEUS, expr)

    def prometheus_targets(self, job: str) -> list[dict]:
        """The active scrape targets of a job that are up."""
        reply = json.loads(http_get(f"http://{PROMETHEUS}/api/v1/targets?state=active"))
        return [t for t in reply["data"]["activeTargets"] if t["labels"]["job"] == job and t["health"] == "up"]


class HealthWatch:
    """Every health check the engine runs on the project's containers, failed ones kept with their time: Docker
    keeps only each container's last five results, so they are read every two seconds."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.seconds: dict[str, list[float]] = collections.defaultdict(list)  # service -> each check's duration
        self.failures: dict[tuple[str, float], str] = {}  # (container name, start in epoch seconds) -> output
        self._incarnation: dict[tuple[str, float], tuple[str, str]] = {}  # check -> (container id, started at)
        self._first_pass: dict[tuple[str, str], float] = {}  # incarnation -> start of its first passing check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            try:
                containers = self.stack.engine.containers.list(
                    filters={"label": f"com.docker.compose.project={self.stack.project}"})
                for container in containers:
                    incarnation = (container.id, container.attrs["State"]["StartedAt"])
                    for check in container.attrs["State"].get("Health", {}).get("Log") or []:
                        key = (container.name, epoch_seconds(check["Start"]))
                        if key in self._incarnation:
                            continue
                        self._incarnation[key] = incarnation
                        self.seconds[container.labels["com.docker.compose.service"]].append(
                            epoch_seconds(check["End"]) - key[1])
                        if check["ExitCode"] == 0:
                            self._first_pass[incarnation] = min(self._first_pass.get(incarnation, key[1]), key[1])
                        else:
                            self.failures[key] = check["Output"].strip()[-300:]
            except docker.errors.DockerException:  # a container removed while being read
                continue

    def failures_since(self, since: float) -> dict[tuple[str, float], str]:
        """Failed checks that started after `since` (time.time(); the engine runs on this machine)."""
        return {key: out for key, out in self.failures.items() if key[1] > since}

    def failures_after_first_pass(self) -> dict[tuple[str, float], str]:
        """Failed checks of a container that had passed one before, in the same run of it (start-up excluded)."""
        return {key: out for key, out in self.failures.items()
                if key[1] > self._first_pass.get(self._incarnation[key], float("inf"))}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def epoch_seconds(stamp: str) -> float:
    """An RFC 3339 time as Docker writes it (nanoseconds, Z or an offset) in seconds since the epoch."""
    head, _, rest = stamp.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits):] or "Z"
    moment = datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    return moment.timestamp() + (float("0." + digits) if digits else 0.0)
