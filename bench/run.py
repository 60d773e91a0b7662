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
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from a3c.config import ActorConfig, HyperParams
from a3c.cpu import machine
from bench.ceiling import measure_ceiling
from bench.drivers import end_to_end, learner_capacity, peer
from bench.report import table

# The capacity run's load, scaled to the machine: on 2 cores 8 pushers (2 processes) and 2 fronts; on 16 cores,
# where a fixed 8 pushers left the learner idle between pushes, 24 pushers and 4 fronts (measured best there).
CORES = os.cpu_count() or 1
DEFAULT_PUSHERS = f"{max(2, CORES * 3 // 8)}x4"
FRONTENDS = max(2, CORES // 4)


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
    # A smoke run only has to show every part reporting a number: one short window of each.
    window, warmup, windows = (2.0, 3.0, 1) if quick else (args.window, 15.0, 3)

    report = {"date": time.strftime("%Y-%m-%d"), "env": args.env, "machine": machine(), "train_args": args.train_args,
              "learner_args": args.learner_args}
    print(f"machine: {report['machine']}", file=sys.stderr)
    train_args, learner_args = shlex.split(args.train_args), shlex.split(args.learner_args)
    capacity_seconds = 1.5 if quick else 15.0
    if args.only:
        with tempfile.TemporaryDirectory() as tmp:
            if args.only == "capacity":
                print(json.dumps(learner_capacity(args.env, capacity_seconds, *args.pushers, Path(tmp), learner_args)))
            for count in counts if args.only == "e2e" else []:
                print(json.dumps(end_to_end(args.env, count, window, warmup, windows, Path(tmp), train_args)))
        return 0
    actor = ActorConfig()

    def ceiling() -> tuple[list[float], str]:
        return measure_ceiling(args.env, actor.num_envs, HyperParams().t_max, actor.conv_precision,
                               seconds=1.0 if quick else 8.0, repeats=windows)

    rates, precision = ceiling()
    print(f"ceiling: {statistics.median(rates):,.0f} frames/s per core", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        report["end_to_end"] = []
        for count in counts:
            run = end_to_end(args.env, count, window, warmup, windows, Path(tmp), train_args)
            report["end_to_end"].append(run)
            print(f"end to end, {count} actors: {run['frames_per_second']:,.0f} frames/s", file=sys.stderr)
        if not quick:  # the one lever that is not a default: its speed and wire share beside the defaults'
            report["end_to_end_overlap"] = end_to_end(args.env, 2, window, warmup, windows, Path(tmp),
                                                      train_args + ["--overlap-pushes"])
        report["peer"] = peer(args.env, 2.0 if quick else 40.0)
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
        print(f"ceiling again: {statistics.median(rates[windows:]):,.0f} frames/s per core", file=sys.stderr)
    per_core = statistics.median(rates)
    report["ceiling"] = {"per_core": per_core, "frames_per_second": per_core * os.cpu_count(), "window_rates": rates,
                         "conv_precision": precision}
    report["table"] = table(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(report["table"])
    return 0
