"""The benchmark's drivers: each starts real processes, loads them, and measures through the probes."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from a3c.config import ActorConfig, HyperParams
from a3c.envs import describe_env
from apps.local import last_record, wait_for_ports
from bench.capacity import Pushers
from bench.probes import children_cpu_seconds, private_memory_by_service, quantile, scrape, total

ROOT = Path(__file__).resolve().parent.parent


def end_to_end(env_id: str, actors: int, window: float, warmup: float, windows: int, workdir: Path,
               train_args: list[str] = ()) -> dict:
    """`a3c train` (defaults plus `train_args`): frames/s of `windows` windows after `warmup` seconds of training."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"e2e-{actors}-", dir=workdir))  # fresh: a used one would resume
    proc = subprocess.Popen([sys.executable, "-m", "apps", "train", "--env", env_id, "--actors", str(actors),
                             "--run-dir", str(run_dir), "--log-interval", "1", *train_args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:  # whatever happens, the run and its processes stop with this measurement
        progress = run_dir / "progress.jsonl"
        # Written once every actor has reported its metrics port.
        while (record := last_record(progress)) is None or record["frames"] == 0 \
                or not (run_dir / "scrape-targets.json").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"a3c train with {actors} actors exited early")
            time.sleep(0.2)
        targets = json.loads((run_dir / "scrape-targets.json").read_text())
        learner_port = int(targets[0]["targets"][0].rsplit(":", 1)[1])
        actor_ports = [int(t.rsplit(":", 1)[1]) for t in targets[1]["targets"]]
        time.sleep(warmup)
        marks, peaks, private = [], {"learner": 0.0, "actor": 0.0}, {"learner": 0.0, "actor": 0.0}
        for index in range(windows + 1):
            snapshot = {"time": time.monotonic(), "learner": scrape(learner_port),
                        "actors": [scrape(port) for port in actor_ports]}
            marks.append(snapshot)
            peaks["learner"] = max(peaks["learner"], total(snapshot["learner"], "process_resident_memory_bytes"))
            peaks["actor"] = max([peaks["actor"]] + [total(a, "process_resident_memory_bytes")
                                                     for a in snapshot["actors"]])
            for service, sizes in private_memory_by_service(proc.pid).items():
                private[service] = max([private[service]] + sizes)
            if index < windows:
                time.sleep(window)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    rates = [(total(b["learner"], "a3c_learner_env_frames_total") - total(a["learner"], "a3c_learner_env_frames_total"))
             / (b["time"] - a["time"]) for a, b in zip(marks, marks[1:])]
    first, last = marks[0], marks[-1]
    wall = last["time"] - first["time"]
    frames_per_step = describe_env(env_id).frames_per_step
    rpc_share, wait_share, bytes_per_step, latency = [], [], [], {}
    for before, after in zip(first["actors"], last["actors"]):
        rpc = total(after, "a3c_actor_rpc_seconds_sum") - total(before, "a3c_actor_rpc_seconds_sum")
        rpc_share.append(rpc / wall)
        waited = (total(after, "a3c_actor_learner_wait_seconds_total")
                  - total(before, "a3c_actor_learner_wait_seconds_total"))
        wait_share.append(waited / wall)
        steps = (total(after, "a3c_actor_env_frames_total") - total(before, "a3c_actor_env_frames_total"))
        steps /= frames_per_step
        moved = sum(total(after, n) - total(before, n)
                    for n in ("a3c_actor_sent_bytes_total", "a3c_actor_received_bytes_total"))
        bytes_per_step.append(moved / max(steps, 1))
        for method in ("PushGradients", "GetParams"):
            for q in (0.5, 0.99):
                value = quantile(before, after, "a3c_actor_rpc_seconds", {"method": method}, q)
                if value is not None:
                    latency.setdefault(f"{method}_p{int(q * 100)}_ms", []).append(1000 * value)
    return {"actors": actors, "frames_per_second": statistics.median(rates), "window_rates": rates,
            "rpc_share": statistics.mean(rpc_share), "wait_share": statistics.mean(wait_share),
            "bytes_per_agent_step": statistics.mean(bytes_per_step),
            "latency_ms": {k: statistics.median(v) for k, v in latency.items()},
            "peak_rss_mb": {k: v / 2**20 for k, v in peaks.items()}, "peak_private_mb": private}


def learner_capacity(env_id: str, seconds: float, processes: int, threads: int, workdir: Path,
                     learner_args: list[str] = ()) -> dict:
    port_file = Path(tempfile.mkdtemp(prefix="capacity-", dir=workdir)) / "learner.ports"
    learner = subprocess.Popen([sys.executable, "-m", "apps", "learner", "--env", env_id, "--listen", "127.0.0.1:0",
                                "--metrics-port", "0", "--port-file", str(port_file), "--checkpoint-dir",
                                str(port_file.parent / "checkpoints"), "--max-staleness", "100000000",
                                "--log-interval", "60", *learner_args],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ports = wait_for_ports(port_file, learner)
        port, metrics_port = ports["grpc"], ports["metrics"]
        pushers = Pushers(f"127.0.0.1:{port}", processes, threads)
        try:
            pushers.wait_all_pushing(timeout=180)
            time.sleep(2)  # past the first pushes' one-off costs
            rates, cpu_per_update, fronts_per_update, rss = [], [], [], 0.0
            for _ in range(3):
                before, start, fronts = scrape(metrics_port), time.monotonic(), children_cpu_seconds(learner.pid)
                time.sleep(seconds / 3)
                after = scrape(metrics_port)
                updates = total(after, "a3c_learner_updates_total") - total(before, "a3c_learner_updates_total")
                rates.append(updates / (time.monotonic() - start))
                cpu = total(after, "process_cpu_seconds_total") - total(before, "process_cpu_seconds_total")
                cpu_per_update.append(1000 * cpu / max(updates, 1))
                fronts_per_update.append(1000 * (children_cpu_seconds(learner.pid) - fronts) / max(updates, 1))
                rss = max(rss, total(after, "process_resident_memory_bytes"))
        finally:
            pushers.stop()
    finally:
        learner.terminate()
        learner.wait(timeout=60)
    frames_per_update = HyperParams().t_max * ActorConfig().num_envs * describe_env(env_id).frames_per_step
    updates = statistics.median(rates)
    return {"pushers": processes * threads, "updates_per_second": updates, "window_rates": rates,
            "frames_per_update": frames_per_update, "frames_per_second_equivalent": updates * frames_per_update,
            "learner_cpu_ms_per_update": statistics.median(cpu_per_update),
            "fronts_cpu_ms_per_update": statistics.median(fronts_per_update), "learner_args": list(learner_args),
            "learner_peak_rss_mb": rss / 2**20}


def peer(env_id: str, seconds: float) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.peer_sb3", "--env", env_id, "--seconds", str(seconds)],
                            cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])
