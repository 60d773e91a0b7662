"""`make bench` (python -m bench): every figure of one report from one run on one machine.

1. ceiling: the actor's own work with an in-process apply, per core, times the cores
2. end to end: `a3c train` with 1, 2, 4 and 8 actors as real processes over gRPC, and its ratio to the ceiling
3. peer: Stable-Baselines3 A2C on the same env, and our ratio to it
4. wire: share of actor time in RPCs, bytes per agent step, p50/p99 of each RPC (from the actors' metrics)
5. learner capacity: synthetic pushers against one learner, updates/s and the frames/s that equals; again with
   its gRPC served by front processes (--frontends), with the CPU per update of the learner's process and fronts
6. memory: peak resident memory of learner and actor

Throughputs are medians of repeated windows. Results go to a JSON file and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from a3c.config import ActorConfig, HyperParams
from a3c.envs import describe_env
from apps.local import free_port, last_record
from bench.capacity import Pushers
from bench.ceiling import measure_ceiling

ROOT = Path(__file__).resolve().parent.parent
# The capacity run's load, scaled to the machine: on 2 cores 8 pushers (2 processes) and 2 fronts; on 16 cores,
# where a fixed 8 pushers left the learner idle between pushes, 24 pushers and 4 fronts (measured best there).
CORES = os.cpu_count() or 1
DEFAULT_PUSHERS = f"{max(2, CORES * 3 // 8)}x4"
FRONTENDS = max(2, CORES // 4)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics endpoint, keyed by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def quantile(before: dict, after: dict, name: str, labels: dict, q: float) -> float | None:
    """The q-quantile of a histogram's observations between two scrapes (linear within a bucket)."""
    buckets = []
    for (sample, sample_labels), value in after.items():
        found = dict(sample_labels)
        if sample != f"{name}_bucket" or any(found.get(k) != v for k, v in labels.items()):
            continue
        bound = float(found["le"])
        buckets.append((bound, value - before.get((sample, sample_labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def total(scraped: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scraped.items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))


def end_to_end(env_id: str, actors: int, window: float, warmup: float, windows: int, workdir: Path,
               train_args: list[str] = ()) -> dict:
    """`a3c train` (defaults plus `train_args`): frames/s of `windows` windows after `warmup` seconds of training."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"e2e-{actors}-", dir=workdir))  # fresh: a used one would resume
    proc = subprocess.Popen([sys.executable, "-m", "apps", "train", "--env", env_id, "--actors", str(actors),
                             "--run-dir", str(run_dir), "--log-interval", "1", *train_args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:  # whatever happens, the run and its processes stop with this measurement
        progress = run_dir / "progress.jsonl"
        while (record := last_record(progress)) is None or record["frames"] == 0:
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


def children_stats(pid: int) -> dict[int, list[str]]:
    """The /proc stat fields (after the name) of a process's children, by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = fields
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's children so far (a learner's gRPC front processes), from /proc."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in children_stats(pid).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def private_memory_by_service(pid: int) -> dict[str, list[float]]:
    """Anonymous resident memory (MB) of the learner and actors that `a3c train` (pid) runs: what each process
    holds itself, without the library pages it maps (libtorch's alone are 100-190 MB of an actor's resident
    memory, shared by every process on the machine, and more or fewer of them are mapped depending on what the
    page cache holds)."""
    found: dict[str, list[float]] = {"learner": [], "actor": []}
    for child in children_stats(pid):
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        service = args[args.index("apps") + 1] if "apps" in args[:-1] else None
        anon = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), None)
        if service in found and anon is not None:
            found[service].append(anon / 1024)
    return found


def learner_capacity(env_id: str, seconds: float, processes: int, threads: int, workdir: Path,
                     learner_args: list[str] = ()) -> dict:
    port, metrics_port = free_port(), free_port()
    learner = subprocess.Popen([sys.executable, "-m", "apps", "learner", "--env", env_id, "--listen",
                                f"127.0.0.1:{port}", "--metrics-port", str(metrics_port), "--checkpoint-dir",
                                str(workdir / "capacity"), "--max-staleness", "100000000", "--log-interval", "60", *learner_args],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
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


def table(report: dict) -> str:
    ceiling = report["ceiling"]["frames_per_second"]
    peer_fps = report["peer"].get("frames_per_second")
    rows = [("Ceiling (actor work + in-process apply, 1 core x cores)",
             f"{ceiling:,.0f} frames/s ({report['ceiling']['per_core']:,.0f} per core, "
             f"{report['ceiling'].get('conv_precision', 'float32')} convolutions)")]
    if peer_fps:
        rows.append(("Stable-Baselines3 A2C, 16 envs", f"{peer_fps:,.0f} frames/s"))

    def speed(fps: float) -> str:
        ratios = f"{fps / ceiling:.0%} of ceiling" + (f", {fps / peer_fps:.2f}x SB3 A2C" if peer_fps else "")
        return f"{fps:,.0f} frames/s ({ratios})"

    for run in report["end_to_end"]:
        rows.append((f"a3c train, {run['actors']} actor(s)", speed(run["frames_per_second"])))
    overlap = report.get("end_to_end_overlap")
    if overlap:
        rows.append(("a3c train, 2 actors, `--overlap-pushes`", f"{speed(overlap['frames_per_second'])}; waiting on "
                     f"the learner {overlap['wait_share']:.1%} of actor wall time"))
    wire = next((r for r in report["end_to_end"] if r["actors"] == 2), report["end_to_end"][0])
    latency = ", ".join(f"{k.replace('_ms', '')} {v:.1f} ms" for k, v in sorted(wire["latency_ms"].items()))
    rows += [(f"Wire ({wire['actors']} actors): time waiting on the learner",
              f"{wire['wait_share']:.1%} of actor wall time (RPCs in flight {wire['rpc_share']:.1%})"),
             ("Wire: bytes per agent step", f"{wire['bytes_per_agent_step']:,.0f} B"),
             ("Wire: RPC latency seen by actors", latency or "n/a")]
    capacity = report["learner_capacity"]
    per_core = 1000 / capacity["learner_cpu_ms_per_update"]
    rows += [(f"Learner capacity ({capacity['pushers']} synthetic pushers on the same cores)",
              f"{capacity['updates_per_second']:,.0f} updates/s = {capacity['frames_per_second_equivalent']:,.0f} "
              f"frames/s at {capacity['frames_per_update']} frames per update"),
             ("Learner CPU per update", f"{capacity['learner_cpu_ms_per_update']:.1f} ms: one core would absorb "
              f"{per_core:,.0f} updates/s = {per_core * capacity['frames_per_update']:,.0f} frames/s")]
    fronted = report.get("learner_capacity_frontends")
    if fronted:
        alone = 1000 / fronted["learner_cpu_ms_per_update"]
        rows.append((f"Learner capacity, `{' '.join(fronted['learner_args'])}` (gRPC in front processes)",
                     f"{fronted['updates_per_second']:,.0f} updates/s = "
                     f"{fronted['frames_per_second_equivalent']:,.0f} frames/s; per update the learner's own process "
                     f"{fronted['learner_cpu_ms_per_update']:.1f} ms of CPU (alone on a core it would absorb "
                     f"{alone:,.0f} updates/s = {alone * fronted['frames_per_update']:,.0f} frames/s), the fronts "
                     f"{fronted['fronts_cpu_ms_per_update']:.1f} ms"))
    def peak(kind: str, service: str) -> str:
        return f"{max(r[kind][service] for r in report['end_to_end']):,.0f} MB"

    rows += [("Peak resident memory (in brackets: its own, without shared library pages)",
              f"learner {peak('peak_rss_mb', 'learner')} ({peak('peak_private_mb', 'learner')}), "
              f"actor {peak('peak_rss_mb', 'actor')} ({peak('peak_private_mb', 'actor')})")]
    m = report["machine"]
    head = (f"Measured {report['date']} on {m['cores']} cores ({m['cpu']}), {report['env']}, defaults; "
            f"medians of repeated windows.\n\n| what | result |\n|---|---|\n")
    return head + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def pusher_shape(text: str) -> tuple[int, int]:
    """'2x4' -> (2 processes, 4 threads each)."""
    try:
        processes, threads = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROCESSESxTHREADS such as 2x4, got {text!r}") from None
    if processes < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"expected at least one process and one thread, got {text!r}")
    return processes, threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--actors", default="1,2,4,8", help="actor counts for the end-to-end runs")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measured window (3 per run)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short windows, one actor count")
    parser.add_argument("--output", default="bench/results.json")
    parser.add_argument("--train-args", default="", help="extra `a3c train` flags for the end-to-end runs, to "
                        "measure a lever against the defaults (docs/benchmarks.md's table uses none)")
    parser.add_argument("--only", choices=("e2e", "capacity"), help="run one part alone and print its JSON "
                        "(to compare levers); writes no report")
    parser.add_argument("--learner-args", default="", help="extra `a3c learner` flags for the capacity run")
    parser.add_argument("--pushers", default=DEFAULT_PUSHERS, type=pusher_shape, help="synthetic pushers for the "
                        "capacity runs as PROCESSESxTHREADS (default for this machine: %(default)s)")
    args = parser.parse_args(argv)
    quick = args.quick
    counts = [1] if quick else [int(n) for n in args.actors.split(",")]
    window, warmup = (2.0, 3.0) if quick else (args.window, 15.0)

    report = {"date": time.strftime("%Y-%m-%d"), "env": args.env, "machine": machine(), "train_args": args.train_args,
              "learner_args": args.learner_args}
    print(f"machine: {report['machine']}", file=sys.stderr)
    train_args, learner_args = shlex.split(args.train_args), shlex.split(args.learner_args)
    capacity_seconds = 3.0 if quick else 15.0
    if args.only:
        with tempfile.TemporaryDirectory() as tmp:
            if args.only == "capacity":
                print(json.dumps(learner_capacity(args.env, capacity_seconds, *args.pushers, Path(tmp), learner_args)))
            for count in counts if args.only == "e2e" else []:
                print(json.dumps(end_to_end(args.env, count, window, warmup, 3, Path(tmp), train_args)))
        return 0
    actor = ActorConfig()

    def ceiling() -> tuple[list[float], str]:
        return measure_ceiling(args.env, actor.num_envs, HyperParams().t_max, actor.conv_precision,
                               seconds=1.0 if quick else 8.0, repeats=3)

    rates, precision = ceiling()
    print(f"ceiling: {statistics.median(rates):,.0f} frames/s per core", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        report["end_to_end"] = []
        for count in counts:
            run = end_to_end(args.env, count, window, warmup, 3, Path(tmp), train_args)
            report["end_to_end"].append(run)
            print(f"end to end, {count} actors: {run['frames_per_second']:,.0f} frames/s", file=sys.stderr)
        if not quick:  # the one lever that is not a default: its speed and wire share beside the defaults'
            report["end_to_end_overlap"] = end_to_end(args.env, 2, window, warmup, 3, Path(tmp),
                                                      train_args + ["--overlap-pushes"])
        report["peer"] = peer(args.env, 4.0 if quick else 40.0)
        print(f"peer: {report['peer']}", file=sys.stderr)
        report["learner_capacity"] = learner_capacity(args.env, capacity_seconds, *args.pushers, Path(tmp), learner_args)
        print(f"capacity: {report['learner_capacity']['updates_per_second']:,.0f} updates/s", file=sys.stderr)
        # The structural lever beside the default: with the gRPC work in other processes, how much is left.
        report["learner_capacity_frontends"] = learner_capacity(args.env, capacity_seconds, *args.pushers, Path(tmp),
                                                                learner_args + ["--frontends", str(FRONTENDS)])
        print(f"capacity, --frontends {FRONTENDS}: "
              f"{report['learner_capacity_frontends']['updates_per_second']:,.0f} updates/s", file=sys.stderr)
    if not quick:  # the machine's speed drifts during a run: half the ceiling's windows at its start, half at its end
        rates += ceiling()[0]
        print(f"ceiling again: {statistics.median(rates[3:]):,.0f} frames/s per core", file=sys.stderr)
    per_core = statistics.median(rates)
    report["ceiling"] = {"per_core": per_core, "frames_per_second": per_core * os.cpu_count(), "window_rates": rates,
                         "conv_precision": precision}
    report["table"] = table(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(report["table"])
    return 0
