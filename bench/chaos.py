"""`make chaos`: train while a script SIGKILLs random actors, scales them 2 -> 8 -> 2, SIGKILLs the learner once
mid-run and once during a checkpoint write, and slows and drops one actor's packets (a rate-limited, lossy veth
into a network namespace); then the same seed without faults. It reports what the faults cost and checks what must hold.

    python -m bench.chaos [--env CartPole-v1 --target 195] [--seed 0] [--output bench/chaos.json]

Every count comes from the services' own metrics, scraped every half second and once more just before a process
is killed, so a killed process's counts are those of its last milliseconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from a3c import checkpoints
from a3c.ports import read_ports
from apps.credentials import new_token, write_tokens
from apps.local import last_record
from bench.probes import scrape, total

ROOT = Path(__file__).resolve().parent.parent
NETNS = "a3c-chaos"
HOST_ADDRESS, NETNS_ADDRESS = "10.231.0.1", "10.231.0.2"
ACTOR_KILLS = 5


@dataclass
class Incarnation:
    """One process of a service and the last counts scraped from it."""

    process: subprocess.Popen
    port_file: Path
    log: Path
    metrics_port: int = 0
    counts: dict = field(default_factory=dict)
    fate: str = "running"  # killed, stopped or running (at the end)
    delayed: bool = False  # behind the slow link

    @property
    def name(self) -> str:
        return self.log.stem

    def log_text(self) -> str:
        return self.log.read_text()


class Fleet:
    """A learner and actors as processes on this machine, restarted as an orchestrator would."""

    def __init__(self, workdir: Path, env: str, seed: int, checkpoint_interval: float, link: str | None) -> None:
        self.workdir, self.env, self.seed = workdir, env, seed
        self.checkpoint_dir, self.progress = workdir / "checkpoints", workdir / "progress.jsonl"
        self.checkpoint_interval = checkpoint_interval
        self.tokens = workdir / "tokens"
        write_tokens(self.tokens, [new_token()])
        self.slow_link = bool(link) and self._make_netns(link)
        self.listen_host = HOST_ADDRESS if self.slow_link else "127.0.0.1"
        self.grpc_port = 0
        self.learners: list[Incarnation] = []
        self.actors: list[Incarnation] = []
        self.started = 0

    def _make_netns(self, link: str) -> bool:
        """A network namespace joined to this one by a veth pair whose far end limits the rate (queueing delay,
        tc's tbf) and drops packets at random both ways (iptables' statistic match): `link` is "RATE LOSS", e.g.
        "50mbit 0.02". (tc's netem would do both, but needs a kernel module that not every machine has.)"""
        steps = [f"ip netns add {NETNS}", f"ip link add {NETNS}-h type veth peer name {NETNS}-n",
                 f"ip link set {NETNS}-n netns {NETNS}", f"ip addr add {HOST_ADDRESS}/30 dev {NETNS}-h",
                 f"ip link set {NETNS}-h up", f"ip netns exec {NETNS} ip addr add {NETNS_ADDRESS}/30 dev {NETNS}-n",
                 f"ip netns exec {NETNS} ip link set {NETNS}-n up", f"ip netns exec {NETNS} ip link set lo up"]
        steps = [step.split() for step in steps] + [["ip", "netns", "exec", NETNS, *command]
                                                    for command in slow_link_commands(link, f"{NETNS}-n")]
        self._remove_netns()
        for step in steps:
            if subprocess.run(step, capture_output=True).returncode != 0:
                print(f"chaos: no slow link ({step!r} failed: it needs root, iproute2 and iptables); every actor "
                      f"on loopback", file=sys.stderr)
                self._remove_netns()
                return False
        return True

    def _remove_netns(self) -> None:
        subprocess.run(["ip", "link", "del", f"{NETNS}-h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)

    def _spawn(self, name: str, args: list[str], prefix: list[str] = ()) -> Incarnation:
        port_file, log = self.workdir / f"{name}.ports", self.workdir / f"{name}.log"
        port_file.unlink(missing_ok=True)
        process = subprocess.Popen([*prefix, sys.executable, "-m", "apps", *args, "--metrics-port", "0",
                                    "--port-file", str(port_file), "--auth-token-file", str(self.tokens)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        return Incarnation(process, port_file, log)

    def start_learner(self) -> Incarnation:
        learner = self._spawn(f"learner-{len(self.learners)}", [
            "learner", "--env", self.env, "--seed", str(self.seed), "--listen", f"{self.listen_host}:{self.grpc_port}",
            "--checkpoint-dir", str(self.checkpoint_dir), "--checkpoint-interval", str(self.checkpoint_interval),
            "--progress-file", str(self.progress), "--log-interval", "1"])
        self.learners.append(learner)
        ports = wait(lambda: read_ports(learner.port_file), 120, "the learner to serve", learner.process)
        self.grpc_port, learner.metrics_port = ports["grpc"], ports["metrics"]
        return learner

    def start_actor(self, delayed: bool = False) -> Incarnation:
        self.started += 1
        prefix = ["ip", "netns", "exec", NETNS] if delayed else []
        actor = self._spawn(f"actor-{self.started}", [
            "actor", "--learner", f"{self.listen_host}:{self.grpc_port}", "--seed", str(self.seed * 1000 + self.started),
            "--actor-id", f"chaos-{self.started}"], prefix)
        actor.delayed = delayed
        self.actors.append(actor)
        return actor

    def add_actors(self, count: int) -> None:
        for _ in range(count):
            self.start_actor()

    def running_actors(self) -> list[Incarnation]:
        return [a for a in self.actors if a.fate == "running"]

    def scrape(self, incarnation: Incarnation) -> None:
        if not incarnation.metrics_port:
            ports = read_ports(incarnation.port_file)
            incarnation.metrics_port = ports["metrics"] if ports else 0
        if incarnation.metrics_port:
            try:
                incarnation.counts = scrape(incarnation.metrics_port, NETNS_ADDRESS if incarnation.delayed else
                                            "127.0.0.1")
            except OSError:
                pass  # going or gone: its last counts stand

    def scrape_all(self) -> None:
        for incarnation in [self.learners[-1], *self.running_actors()]:
            self.scrape(incarnation)

    def kill(self, incarnation: Incarnation, scrape_first: bool = True) -> None:
        if scrape_first:
            self.scrape(incarnation)
        incarnation.process.send_signal(signal.SIGKILL)
        incarnation.process.wait()
        incarnation.fate = "killed"

    def stop(self, incarnation: Incarnation) -> None:
        self.scrape(incarnation)
        incarnation.process.send_signal(signal.SIGTERM)
        incarnation.process.wait(timeout=60)
        incarnation.fate = "stopped"
        count_final_pushes(incarnation)

    def crash_actor(self, victim: Incarnation) -> None:
        """SIGKILL an actor and start another in its place, as a Deployment or a restart policy would."""
        self.kill(victim)
        self.start_actor(victim.delayed)

    def restart_learner(self) -> Incarnation:
        return self.start_learner()

    def checkpoint_being_written(self, learner: Incarnation) -> bool:
        # Its own temporary file: a killed one's may linger.
        return any(self.checkpoint_dir.glob(f".*.{learner.process.pid}.tmp"))

    def close(self) -> None:
        for actor in self.running_actors():
            self.stop(actor)
        if self.learners and self.learners[-1].fate == "running":
            self.scrape(self.learners[-1])
            self.learners[-1].process.send_signal(signal.SIGTERM)
            self.learners[-1].process.wait(timeout=120)
            self.learners[-1].fate = "stopped"
        if self.slow_link:
            self._remove_netns()


def count_final_pushes(actor) -> None:
    """A stopped actor's last push is settled after its last scrape: its exit line has the final count."""
    found = re.search(r"stopped after (\d+) accepted pushes", actor.log_text())
    if found:
        actor.counts[("a3c_actor_pushes_total", (("outcome", "accepted"),))] = float(found.group(1))


def slow_link_commands(link: str, device: str) -> list[list[str]]:
    """`link` ("RATE LOSS", e.g. "50mbit 0.02") on `device`: tc's tbf rate limit (queueing delay) and iptables'
    random drops both ways (its statistic match)."""
    rate, loss = link.split()
    return [["tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate, "burst", "64kbit", "latency",
             "200ms"],
            *(["iptables", "-A", chain, flag, device, "-m", "statistic", "--mode", "random", "--probability", loss,
               "-j", "DROP"] for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")))]


def wait(check, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def kill_during_checkpoint_write(fleet: Fleet, timeout: float) -> bool:
    """SIGKILL the learner while a checkpoint's temporary file exists (scraping it every 20 ms meanwhile, so its
    counts are at most that old); whether it was caught mid-write."""
    learner = fleet.learners[-1]
    fleet.scrape(learner)
    deadline, scraped = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        if fleet.checkpoint_being_written(learner):
            fleet.kill(learner, scrape_first=False)  # now, while the file is there
            return True
        if time.monotonic() - scraped > 0.02:
            fleet.scrape(learner)
            scraped = time.monotonic()
    fleet.kill(learner)
    return False


def resumed_frames(log: str) -> int | None:
    found = re.search(r"resumed from \S+ at version \d+ \((\d+) frames\)", log)
    return int(found.group(1)) if found else None


def run(env: str, target: float, seed: int, seconds: float, faults: bool, link: str | None,
        checkpoint_interval: float, workdir: Path, fleet_kind=Fleet) -> dict:
    """One run to `target` (mean return of the last 100 episodes) or `seconds`; with `faults`, on a schedule
    drawn from `seed` and spread over `seconds`. `fleet_kind` runs the services (local processes by default; the
    container tests pass one of compose containers)."""
    workdir.mkdir(parents=True)
    fleet = fleet_kind(workdir, env, seed, checkpoint_interval, link if faults else None)
    rng = random.Random(seed)
    events: list[dict] = []
    checks = {"checkpoints_readable": True}
    start = time.monotonic()

    def note(what: str, **details) -> None:
        events.append({"at": round(time.monotonic() - start, 2), "event": what, **details})

    try:
        fleet.start_learner()
        fleet.start_actor(delayed=bool(fleet.slow_link))
        fleet.start_actor()
        up = time.monotonic()  # the schedule counts from here: containers take longer than processes to come up
        schedule = []
        if faults:
            schedule = sorted([(0.25, "scale", 8), (0.4, "kill_learner", None), (0.55, "kill_learner_writing", None),
                               (0.65, "scale", 2)] + [(rng.uniform(0.05, 0.9), "kill_actor", None)
                                                      for _ in range(ACTOR_KILLS)],
                              key=lambda e: e[0])
        reached_at = None
        while time.monotonic() - up < seconds * (3 if faults else 1.5):
            time.sleep(0.5)
            fleet.scrape_all()
            while schedule and time.monotonic() - up >= schedule[0][0] * seconds:
                _, what, value = schedule.pop(0)
                if what == "scale":
                    running = fleet.running_actors()
                    fleet.add_actors(max(0, value - len(running)))
                    for actor in [a for a in running if not a.delayed][:max(0, len(running) - value)]:
                        fleet.stop(actor)
                    note(f"scaled to {value} actors")
                elif what == "kill_actor":
                    victim = rng.choice(fleet.running_actors())
                    fleet.crash_actor(victim)
                    note("SIGKILLed an actor", actor=victim.name)
                else:
                    connected = len(fleet.running_actors())
                    mid_write = what == "kill_learner_writing" and \
                        kill_during_checkpoint_write(fleet, checkpoint_interval * 3)
                    if what == "kill_learner":
                        fleet.kill(fleet.learners[-1])
                    before = last_record(fleet.progress)  # the dead learner's last record, at most a second old
                    checks["checkpoints_readable"] &= checkpoints.load_newest(fleet.checkpoint_dir) is not None
                    learner = fleet.restart_learner()
                    resumed = resumed_frames(learner.log_text()) or 0
                    note("SIGKILLed the learner" + (" during a checkpoint write" if mid_write else ""),
                         actors_connected=connected, frames_at_kill=before and before["frames"],
                         frames_lost=before and max(0, before["frames"] - resumed),
                         frames_per_interval=before and before["frames_per_second"] * checkpoint_interval)
            record = last_record(fleet.progress)
            if record and record.get("mean_return") is not None and record["mean_return"] >= target \
                    and record["return_window"] >= 100:
                reached_at = time.monotonic() - start
                note("target reached", frames=record["frames"])
                break
    finally:
        fleet.close()
    return {"faults": faults, "slow_link": link if fleet.slow_link else None, "seconds_to_target": reached_at,
            "frames_to_target": events[-1].get("frames") if reached_at else None, "events": events,
            "ledger": ledger(fleet), "checks": checks}


def ledger(fleet: Fleet) -> dict:
    """Pushes as the actors and the learner counted them, over every incarnation."""
    def actor_sum(name: str, **labels: str) -> float:
        return sum(total(a.counts, name, **labels) for a in fleet.actors if a.counts)

    accepted = actor_sum("a3c_actor_pushes_total", outcome="accepted")
    refused = actor_sum("a3c_actor_pushes_total", outcome="refused")
    failed = sum(sum(v for (name, labels), v in a.counts.items() if name == "a3c_actor_rpc_errors_total"
                     and ("method", "PushGradients") in labels and dict(labels).get("code") not in
                     ("FAILED_PRECONDITION", "ALREADY_EXISTS")) for a in fleet.actors)
    applied = sum(total(learner.counts, "a3c_learner_updates_total") for learner in fleet.learners)
    learner_refused = sum(total(learner.counts, "a3c_learner_gradients_rejected_total") for learner in fleet.learners)
    duplicates = sum(total(learner.counts, "a3c_learner_gradients_rejected_total", reason="duplicate")
                     for learner in fleet.learners)
    killed_actors = sum(a.fate == "killed" for a in fleet.actors)
    return {"actors_accepted": accepted, "actors_refused": refused, "lost_in_flight": failed,
            "learner_applied": applied, "learner_refused": learner_refused, "duplicates_refused": duplicates,
            "applied_but_unanswered": applied - accepted, "actor_incarnations": len(fleet.actors),
            "actors_killed": killed_actors, "learner_kills": sum(l.fate == "killed" for l in fleet.learners)}


def invariants(chaos: dict) -> dict:
    """What must hold whatever the faults, each with its numbers. A push is answered or lost: an actor killed with
    one in flight, or every connected actor's when the learner dies, may lose one each, and the learner may have
    applied it."""
    book = chaos["ledger"]
    kills = [e for e in chaos["events"] if "actors_connected" in e]
    bound = book["actors_killed"] + sum(e["actors_connected"] for e in kills)
    return {
        "pushes_applied_without_an_answer": book["applied_but_unanswered"], "bound": bound,
        # Below zero by at most a few: pushes the learner applied in the last 20 ms before a kill mid-write, after
        # its last scrape.
        "applied_once_each": -5 * len(kills) <= book["applied_but_unanswered"] <= bound
                             and book["duplicates_refused"] == 0,
        "lost_in_flight_bounded": book["lost_in_flight"] <= bound,
        "checkpoints_always_readable": chaos["checks"]["checkpoints_readable"],
        "learner_killed_mid_write": any("during a checkpoint write" in e["event"] for e in kills),
        # a quarter over for the rate's noise and, killed mid-write, the write in progress
        "frames_lost_per_learner_kill_within_one_interval": all(
            e["frames_lost"] is not None and e["frames_lost"] <= 1.25 * e["frames_per_interval"] for e in kills),
        "target_reached": chaos["seconds_to_target"] is not None,
        # The schedule ran to its end before the target: each fault above was really injected.
        "every_fault_injected": [e["event"] for e in chaos["events"]].count("SIGKILLed an actor") == ACTOR_KILLS
                                and len(kills) == 2 and book["actors_accepted"] > 0
                                and {"scaled to 8 actors", "scaled to 2 actors"} <= {e["event"] for e in chaos["events"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--target", type=float, default=None, help="mean return to reach (Pong 18, CartPole 195)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-interval", type=float, default=None,
                        help="seconds (default: a tenth of the clean run's time to the target)")
    parser.add_argument("--link", default="500mbit 0.005", help="RATE LOSS of one actor's link (tc tbf rate, share of "
                        "packets dropped each way)")
    parser.add_argument("--clean-seconds", type=float, help="skip the clean run: its seconds to the target, from an "
                        "earlier run of the same seed (with --clean-frames)")
    parser.add_argument("--clean-frames", type=int, help="skip the clean run: its frames to the target")
    parser.add_argument("--output", default=str(ROOT / "bench" / "chaos.json"))
    args = parser.parse_args(argv)
    target = args.target if args.target is not None else (18.0 if "Pong" in args.env else 195.0)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        if args.clean_seconds:
            clean = {"faults": False, "seconds_to_target": args.clean_seconds, "frames_to_target": args.clean_frames,
                     "reused": True}
        else:
            clean = run(args.env, target, args.seed, seconds=3600, faults=False, link=None,
                        checkpoint_interval=args.checkpoint_interval or 60, workdir=workdir / "clean")
        if not clean["seconds_to_target"]:
            print("chaos: the clean run never reached the target", file=sys.stderr)
            return 1
        interval = args.checkpoint_interval or max(2.0, clean["seconds_to_target"] / 10)
        chaos = run(args.env, target, args.seed, seconds=clean["seconds_to_target"], faults=True, link=args.link,
                    checkpoint_interval=interval, workdir=workdir / "chaos")
        verdict = invariants(chaos)
        verdict["time_to_target_ratio"] = (chaos["seconds_to_target"] or math.inf) / clean["seconds_to_target"]
        verdict["within_1.3x_of_clean"] = verdict["time_to_target_ratio"] <= 1.3
        report = {"env": args.env, "target": target, "seed": args.seed, "checkpoint_interval": interval,
                  "clean": clean, "chaos": chaos, "verdict": verdict}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["verdict"], indent=1))
    return 0 if all(v for v in report["verdict"].values() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
