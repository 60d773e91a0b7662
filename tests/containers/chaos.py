"""The chaos run's services as compose containers (bench/chaos.py drives them): crashes are SIGKILLs of a
container's service process from the host, after which the engine's restart policy starts it again, as it would
after an OOM kill; scaling is compose's; the slow link is tc and iptables in one actor container's network
namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml
from docker.models.containers import Container

from bench.chaos import count_final_pushes, slow_link_commands, wait
from bench.probes import scrape
from tests.containers.engine import Stack, epoch_seconds

METRICS_PORTS = {"learner": 9400, "actor": 9401}


@dataclass
class ContainerIncarnation:
    """One run of a container's service process and the last counts scraped from it."""

    container: Container
    started: str  # the engine's StartedAt of this run
    counts: dict = field(default_factory=dict)
    fate: str = "running"  # killed, stopped or running (at the end)
    delayed: bool = False  # behind the slow link

    @property
    def name(self) -> str:
        return f"{self.container.name}@{self.started[11:19]}"

    @property
    def service(self) -> str:
        return self.container.labels["com.docker.compose.service"]

    def log_text(self) -> str:
        since = int(epoch_seconds(self.started))
        return self.container.logs(since=since).decode(errors="replace")


class ComposeFleet:
    """bench/chaos.py's Fleet, in a compose project of docker-compose.yml (credentials, learner, actors) with the
    learner set to the run's game, seed and checkpoint interval, and to write its progress into its volume."""

    def __init__(self, engine: docker.DockerClient, workdir: Path, env: str, seed: int, checkpoint_interval: float,
                 link: str | None) -> None:
        self.engine, self.link = engine, link
        override = workdir / "chaos.yml"
        override.write_text(yaml.safe_dump({"services": {"learner": {"environment": {
            "A3C_ENV": env, "A3C_SEED": str(seed), "A3C_CHECKPOINT_INTERVAL": str(checkpoint_interval),
            "A3C_PROGRESS_FILE": "/data/progress.jsonl", "A3C_LOG_INTERVAL": "1"}}}}))
        self.stack = Stack(engine, f"a3cchaos{os.getpid()}", extra_files=[override])
        self.slow_link = bool(link) and all(shutil.which(tool) for tool in ("nsenter", "tc", "iptables"))
        self.learners: list[ContainerIncarnation] = []
        self.actors: list[ContainerIncarnation] = []
        self._data: Path | None = None

    # --- where the learner writes, seen from the host ------------------------------------------------------------

    @property
    def data(self) -> Path:
        if self._data is None:
            volume = self.engine.volumes.get(f"{self.stack.project}_checkpoints")
            self._data = Path(volume.attrs["Mountpoint"])
        return self._data

    @property
    def progress(self) -> Path:
        return self.data / "progress.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data / "checkpoints"

    def checkpoint_being_written(self, learner: ContainerIncarnation) -> bool:
        # Every run of the service is process 7 under tini: a temporary file of this run is one written since it
        # started.
        started = epoch_seconds(learner.started)
        return any(tmp.stat().st_mtime >= started for tmp in self.checkpoint_dir.glob(".*.tmp"))

    # --- the services ---------------------------------------------------------------------------------------------

    def _incarnation(self, container: Container, delayed: bool = False) -> ContainerIncarnation:
        container.reload()
        return ContainerIncarnation(container, container.attrs["State"]["StartedAt"], delayed=delayed)

    def _serving(self, learner: ContainerIncarnation) -> bool:
        return "serving on" in learner.log_text()

    def start_learner(self) -> ContainerIncarnation:
        self.stack.compose("up", "--detach", "--no-build", "learner")
        learner = self._incarnation(self.stack.learner())
        self.learners.append(learner)
        wait(lambda: self._serving(learner), 120, "the learner to serve")
        return learner

    def start_actor(self, delayed: bool = False) -> ContainerIncarnation:
        (actor,) = self._scale_up(1, delayed)
        return actor

    def add_actors(self, count: int) -> None:
        self._scale_up(count)

    def _scale_up(self, count: int, delayed: bool = False) -> list[ContainerIncarnation]:
        """`count` more actor containers in one `up --scale`, as a user scaling the service would."""
        known = {c.id for c in self.stack.containers("actor", all=True)}
        self.stack.compose("up", "--detach", "--no-build", "--no-recreate", "--scale",
                           f"actor={len(known) + count}", "actor")
        added = [self._incarnation(c, delayed and self.slow_link) for c in self.stack.containers("actor")
                 if c.id not in known]
        for actor in added:
            if actor.delayed:
                self._slow_down(actor)
        self.actors += added
        return added

    def _slow_down(self, actor: ContainerIncarnation) -> None:
        """The run's slow link on the container's eth0, inside its network namespace."""
        enter = ["nsenter", "-t", str(actor.container.attrs["State"]["Pid"]), "-n"]
        for command in slow_link_commands(self.link, "eth0"):
            subprocess.run(enter + command, check=True, capture_output=True)

    def running_actors(self) -> list[ContainerIncarnation]:
        return [a for a in self.actors if a.fate == "running"]

    def scrape(self, incarnation: ContainerIncarnation) -> None:
        try:
            incarnation.counts = scrape(METRICS_PORTS[incarnation.service], self.stack.ip(incarnation.container))
        except (OSError, StopIteration, docker.errors.DockerException):
            pass  # going, gone or restarting: its last counts stand

    def scrape_all(self) -> None:
        for incarnation in [self.learners[-1], *self.running_actors()]:
            self.scrape(incarnation)

    def kill(self, incarnation: ContainerIncarnation, scrape_first: bool = True) -> None:
        """SIGKILL the service process (tini's child) from the host: tini exits with it, and the engine restarts
        the container, as after an OOM kill."""
        if scrape_first:
            self.scrape(incarnation)
        tini = incarnation.container.attrs["State"]["Pid"]
        service = Path(f"/proc/{tini}/task/{tini}/children").read_text().split()[0]
        os.kill(int(service), signal.SIGKILL)
        incarnation.fate = "killed"

    def _restarted(self, incarnation: ContainerIncarnation) -> ContainerIncarnation:
        """The next run of a killed container's service, once the engine has restarted it."""
        container = incarnation.container

        def running_again() -> bool:
            container.reload()
            state = container.attrs["State"]
            return state["Running"] and state["StartedAt"] != incarnation.started

        wait(running_again, 120, f"the engine to restart {container.name}")
        return self._incarnation(container, incarnation.delayed)

    def crash_actor(self, victim: ContainerIncarnation) -> None:
        self.kill(victim)
        successor = self._restarted(victim)
        if successor.delayed:  # a restarted container gets a new network namespace
            self._slow_down(successor)
        self.actors.append(successor)

    def restart_learner(self) -> ContainerIncarnation:
        learner = self._restarted(self.learners[-1])
        self.learners.append(learner)
        wait(lambda: self._serving(learner), 120, "the learner to serve again")
        return learner

    def stop(self, incarnation: ContainerIncarnation) -> None:
        """SIGTERM, as a scale-down does: the actor settles its last push and says it leaves; then its container goes."""
        self.scrape(incarnation)
        incarnation.container.stop(timeout=60 if incarnation.service == "learner" else 20)
        incarnation.fate = "stopped"
        count_final_pushes(incarnation)
        if incarnation.service == "actor":
            incarnation.container.remove()

    def close(self) -> None:
        try:
            for actor in self.running_actors():
                self.stop(actor)
            if self.learners and self.learners[-1].fate == "running":
                self.stop(self.learners[-1])
        finally:
            self.stack.compose("down", "--volumes", "--timeout", "60")

