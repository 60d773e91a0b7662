"""Helpers for tests that run the real `a3c` services as separate processes."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from a3c.ports import read_ports

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port free right now, for third-party programs (Prometheus) that cannot report the port they got for 0;
    the project's own services bind port 0 and write a port file instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """A command-line tool the tests run for real: on PATH, or beside this Python (the venv's)."""
    beside = Path(sys.executable).parent / name
    path = shutil.which(name) or (str(beside) if beside.exists() else None)
    assert path, f"{name} is missing: `make test` installs it"
    return path


def start_a3c(*args: str, log: Path, **kwargs) -> subprocess.Popen:
    """`a3c ARGS...` in its own process, stdout and stderr to `log`."""
    handle = open(log, "a")
    return subprocess.Popen([sys.executable, "-m", "apps", *args], cwd=ROOT, stdout=handle, stderr=handle,
                            text=True, **kwargs)


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def parse_metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of a Prometheus exposition, read with prometheus_client's own parser (NaN when absent): the
    unlabelled one, or the first whose labels include `labels`."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (all(sample.labels.get(k) == v for k, v in labels.items()) if labels
                                        else not sample.labels):
                return sample.value
    return float("nan")


def metric_total(port: int, name: str) -> float:
    """The sum of a metric's samples over all their labels, from a /metrics endpoint on this machine."""
    return sum(sample.value for family in text_string_to_metric_families(http_get(f"http://127.0.0.1:{port}/metrics"))
               for sample in family.samples if sample.name == name)


def metric(port: int, name: str) -> float:
    """One unlabelled sample from a /metrics endpoint on this machine (NaN when absent)."""
    return parse_metric(http_get(f"http://127.0.0.1:{port}/metrics"), name)


def wait_for(check: Callable[[], object], timeout: float, what: str,
             processes: tuple[subprocess.Popen, ...] = ()) -> object:
    """Poll `check` until it returns something truthy; fail fast if one of `processes` dies meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        dead = [(p.args[3:5], p.returncode) for p in processes if p.poll() is not None]
        assert not dead, f"a process died while waiting for {what}: {dead}"
        try:
            value = check()
        except Exception as err:  # not up yet: connection refused, a probe that fails, ...
            value, last_error = None, err
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r})")
        time.sleep(0.25)


def stop(*processes: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalRun:
    """A learner and actors as real processes on loopback. Every port is bound as port 0 and read back from the
    service's port file, except that a restarted learner takes the gRPC port of its first start (its actors
    reconnect to that address)."""

    def __init__(self, tmp: Path, env: str = "CartPole-v1", learner_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.env = env
        self.learner_args = learner_args
        self.grpc_port = 0
        self.learner_metrics = 0
        self._actor_port_files: list[Path] = []
        self.learner: subprocess.Popen | None = None
        self.actors: list[subprocess.Popen] = []
        self.evaluator: subprocess.Popen | None = None

    @property
    def processes(self) -> tuple[subprocess.Popen, ...]:
        return tuple(p for p in [self.learner, *self.actors, self.evaluator] if p is not None)

    def start_learner(self) -> subprocess.Popen:
        """A learner, returned once it serves (its port file is written then)."""
        port_file = self.tmp / "learner.ports"
        port_file.unlink(missing_ok=True)
        self.learner = start_a3c("learner", "--env", self.env, "--listen", f"127.0.0.1:{self.grpc_port}",
                                 "--metrics-port", "0", "--port-file", str(port_file), "--checkpoint-dir",
                                 str(self.tmp / "checkpoints"), "--log-interval", "1", *self.learner_args,
                                 log=self.tmp / "learner.log")
        ports = wait_for(lambda: read_ports(port_file), 90, "the learner to serve", (self.learner,))
        self.grpc_port, self.learner_metrics = ports["grpc"], ports["metrics"]
        return self.learner

    def start_actor(self, *args: str) -> subprocess.Popen:
        """An actor of the learner started before (or of the gRPC port set for it); it starts in the background."""
        index = len(self.actors)
        port_file = self.tmp / f"actor-{index}.ports"
        actor = start_a3c("actor", "--learner", f"127.0.0.1:{self.grpc_port}", "--num-envs", "2",
                          "--metrics-port", "0", "--port-file", str(port_file), "--seed", str(index), *args,
                          log=self.tmp / f"actor-{index}.log")
        self.actors.append(actor)
        self._actor_port_files.append(port_file)
        return actor

    def start_evaluator(self) -> subprocess.Popen:
        """An evaluator of the learner started before: rounds of 3 greedy episodes, one a second at most."""
        self.evaluator = start_a3c("evaluator", "--learner", f"127.0.0.1:{self.grpc_port}", "--episodes", "3",
                                   "--interval", "1", "--metrics-port", "0", "--port-file",
                                   str(self.tmp / "evaluator.ports"), "--output-dir", str(self.tmp / "evaluation"),
                                   log=self.tmp / "evaluator.log")
        return self.evaluator

    @property
    def evaluator_metrics(self) -> int:
        return wait_for(lambda: read_ports(self.tmp / "evaluator.ports"), 60, "the evaluator's metrics",
                        (self.evaluator,))["metrics"]

    @property
    def actor_metrics(self) -> list[int]:
        """The actors' metrics ports, once each serves its metrics."""
        return [wait_for(lambda: read_ports(file), 60, "an actor's metrics", (actor,))["metrics"]
                for actor, file in zip(self.actors, self._actor_port_files)]

    def learner_metric(self, name: str) -> float:
        return metric(self.learner_metrics, name)

    def version(self) -> float:
        return self.learner_metric("a3c_learner_param_version")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def close(self) -> None:
        stop(*self.actors, *([self.evaluator] if self.evaluator else []), timeout=30)
        if self.learner is not None:
            stop(self.learner)
