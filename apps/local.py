"""`a3c train`: one learner, N actors (and an evaluator) as local processes on loopback, the same code the containers
run.

The launcher only starts processes (`python -m apps learner|actor` with flags), follows the learner's
progress file, and stops everything in order: actors first, then the learner, which writes its final
progress record and checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from a3c.config import ActorConfig, EvaluatorConfig, LearnerConfig, RunLimits, to_argv
from a3c.cpu import describe, machine
from a3c.envs import describe_env
from a3c.files import replace_file
from a3c.errors import UserFacingError
from a3c.ports import read_ports
from apps.credentials import new_token, write_tokens

log = logging.getLogger("train")
LEARNER_START_TIMEOUT = 120.0
MAX_ACTOR_RESTARTS = 3
POLL_SECONDS = 0.5


class LaunchError(UserFacingError):
    """A local process could not be started or died; the message says which."""


def _die_with_parent() -> None:
    """Children get SIGTERM if the launcher itself is killed, so no orphan keeps training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen([sys.executable, "-m", "apps", *args], env=env, preexec_fn=preexec)


def _stop(processes: list[subprocess.Popen], timeout: float) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_scrape_targets(path: Path, learner_port: int, actor_ports: list[int],
                         evaluator_ports: list[int] = ()) -> None:
    """A Prometheus file_sd list of this run's /metrics endpoints, with the job names the dashboard uses."""
    groups = [{"targets": [f"127.0.0.1:{learner_port}"], "labels": {"job": "learner"}},
              {"targets": [f"127.0.0.1:{p}" for p in actor_ports], "labels": {"job": "actor"}}]
    if evaluator_ports:
        groups.append({"targets": [f"127.0.0.1:{p}" for p in evaluator_ports], "labels": {"job": "evaluator"}})
    replace_file(path, json.dumps(groups, indent=2) + "\n")  # Prometheus rereads it when it changes


def last_record(progress: Path) -> Optional[dict]:
    """The newest complete line of a progress file."""
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
    return None


def target_reached(record: Optional[dict], target: Optional[float]) -> bool:
    """The mean over a full window of episodes is at least the target."""
    return (target is not None and record is not None and record["mean_return"] is not None
            and record["return_window"] >= 100 and record["mean_return"] >= target)


def wait_for_ports(port_file: Path, learner: subprocess.Popen) -> dict[str, int]:
    """The ports a learner process reports once it serves; LaunchError if it exits first or takes too long."""
    deadline = time.monotonic() + LEARNER_START_TIMEOUT
    while time.monotonic() < deadline:
        if (ports := read_ports(port_file)) is not None:
            return ports
        if learner.poll() is not None:
            raise LaunchError(f"the learner exited with code {learner.returncode} before serving")
        time.sleep(0.1)
    raise LaunchError(f"the learner did not start serving within {LEARNER_START_TIMEOUT:g}s")


def _update_scrape_targets(path: Path, learner_port: int, port_files: list[Path], evaluators: int,
                           written: list[int]) -> list[int]:
    """Once every actor and evaluator (the last `evaluators` of `port_files`) has reported its metrics port,
    (re)write the file_sd list when a port changed (a process restarted); returns the ports the file now holds."""
    found = [read_ports(file) for file in port_files]
    if None in found:
        return written
    ports = [found_ports["metrics"] for found_ports in found]
    if ports != written:
        split = len(ports) - evaluators
        write_scrape_targets(path, learner_port, ports[:split], ports[split:])
        if not written:
            log.info("metrics: learner http://127.0.0.1:%d/metrics, actors %s%s (Prometheus file_sd list in %s)",
                     learner_port, ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports[:split]),
                     "".join(f", evaluator http://127.0.0.1:{p}/metrics" for p in ports[split:]), path)
    return ports


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def train(limits: RunLimits, learner_config: LearnerConfig, actor_config: ActorConfig) -> int:
    # A supervisor's SIGTERM stops the run as cleanly as Ctrl-C. SIGINT gets a handler of its own too: started
    # from a script's background job, Python inherits it ignored, and the children (which set their own handlers)
    # would then stop on Ctrl-C while this process took their exit for a crash.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    describe_env(learner_config.env)  # a bad --env fails here, in one line, before anything starts
    run_dir = Path(limits.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{learner_config.env.replace('/', '_')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    progress, targets = run_dir / "progress.jsonl", run_dir / "scrape-targets.json"
    port_file = run_dir / "learner.ports"
    actor_port_files = [run_dir / f"actor-{index}.ports" for index in range(limits.actors)]
    evaluator_port_files = [run_dir / "evaluator.ports"] if limits.evaluator else []
    for stale in [port_file, targets, *actor_port_files, *evaluator_port_files]:
        stale.unlink(missing_ok=True)
    # Every port is picked by the kernel (port 0) and reported back in a port file: no port can be taken between
    # choosing it and binding it.
    # A token of the run's own, so that other users of this machine cannot push to it over loopback either.
    token_file = run_dir / "auth-tokens"
    write_tokens(token_file, [new_token()])
    learner_config = replace(learner_config, listen="127.0.0.1:0", checkpoint_dir=str(run_dir / "checkpoints"),
                             progress_file=str(progress), port_file=str(port_file), metrics_port=0,
                             auth_token_file=str(token_file),
                             tensorboard=learner_config.tensorboard or str(run_dir / "tensorboard"))
    actor_config = replace(actor_config, auth_token_file=str(token_file))
    log.info("run directory %s; %d actors x %d envs on %s%s; TensorBoard: tensorboard --logdir %s", run_dir,
             limits.actors, actor_config.num_envs, learner_config.env, ", an evaluator" if limits.evaluator else "",
             learner_config.tensorboard)
    log.info("machine: %s", describe(machine()))  # what the run's speed depends on (docs/benchmarks.md)

    learner = _spawn(["learner", *to_argv(learner_config)])
    clients: list[subprocess.Popen] = []  # the actors, then the evaluator
    started = time.monotonic()
    reached = False
    interrupted = False
    try:
        learner_ports = wait_for_ports(port_file, learner)
        address = f"127.0.0.1:{learner_ports['grpc']}"

        def start_actor(index: int) -> subprocess.Popen:
            actor_port_files[index].unlink(missing_ok=True)
            config = replace(actor_config, learner=address, actor_id=f"actor-{index}",
                             seed=actor_config.seed + 1000 * (index + 1), metrics_port=0,
                             port_file=str(actor_port_files[index]))
            return _spawn(["actor", *to_argv(config)])

        def start_evaluator(index: int) -> subprocess.Popen:
            evaluator_port_files[0].unlink(missing_ok=True)
            config = EvaluatorConfig(learner=address, evaluator_id="evaluator",
                                     output_dir=str(run_dir / "evaluation"), metrics_port=0,
                                     port_file=str(evaluator_port_files[0]),
                                     auth_token_file=str(token_file), connect_timeout=actor_config.connect_timeout,
                                     interval=limits.eval_interval)
            return _spawn(["evaluator", *to_argv(config)])

        # Actors first, then the evaluator (if any): what each slot runs, and the name it is reported by.
        starters = [start_actor] * limits.actors + [start_evaluator] * len(evaluator_port_files)
        names = [f"actor {i}" for i in range(limits.actors)] + ["the evaluator"] * len(evaluator_port_files)
        clients = [start(i) for i, start in enumerate(starters)]
        restarts = [0] * len(clients)
        scraped: list[int] = []
        while True:
            time.sleep(POLL_SECONDS)
            scraped = _update_scrape_targets(targets, learner_ports["metrics"],
                                             actor_port_files + evaluator_port_files, len(evaluator_port_files),
                                             scraped)
            if learner.poll() is not None:
                raise LaunchError(f"the learner exited with code {learner.returncode}")
            for i, proc in enumerate(clients):
                if proc.poll() is not None:
                    if restarts[i] >= MAX_ACTOR_RESTARTS:
                        raise LaunchError(f"{names[i]} exited with code {proc.returncode} "
                                          f"{MAX_ACTOR_RESTARTS + 1} times")
                    log.warning("%s exited with code %d; restarting it", names[i], proc.returncode)
                    restarts[i] += 1
                    clients[i] = starters[i](i)
            record = last_record(progress)
            if target_reached(record, limits.stop_at_return):
                reached = True
                log.info("mean return %.2f reached the target %g", record["mean_return"], limits.stop_at_return)
                break
            if limits.max_seconds is not None and time.monotonic() - started >= limits.max_seconds:
                log.info("time budget of %gs used up", limits.max_seconds)
                break
            if limits.max_frames is not None and record is not None and record["frames"] >= limits.max_frames:
                log.info("frame budget of %d reached", limits.max_frames)
                break
    except KeyboardInterrupt:
        interrupted = True
        log.info("interrupted; stopping")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # one stop at a time
    finally:
        _stop(clients, timeout=15.0)
        _stop([learner], timeout=60.0)

    record = last_record(progress) or {}
    reached = reached or target_reached(record, limits.stop_at_return)
    summary = {
        "frames": record.get("frames", 0),
        "agent_steps": record.get("agent_steps", 0),
        "updates": record.get("updates", 0),
        "episodes": record.get("episodes", 0),
        "seconds": record.get("seconds", round(time.monotonic() - started, 3)),
        "frames_per_second": record.get("average_frames_per_second", 0.0),
        "mean_return": record.get("mean_return"),
        # The episodes that finish while the processes stop can pull the last mean back under a target it reached.
        "best_mean_return": record.get("best_mean_return"),
        "eval_mean_return": record.get("eval_mean_return"),  # the evaluator's last round (with --evaluator)
        "target_return": limits.stop_at_return,
        "reached": reached,
        "run_dir": str(run_dir),
    }
    print(json.dumps(summary), flush=True)
    if limits.stop_at_return is not None:
        return 0 if reached else 1
    return 130 if interrupted else 0
