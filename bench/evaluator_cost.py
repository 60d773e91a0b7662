"""What an evaluator costs the actors it shares a machine with: `a3c train` on Pong with and without `--evaluator`,
alternated, frames/s over each run's steady part, and the evaluator's own CPU time and rounds.

    python -m bench.evaluator_cost [--runs 2] [--seconds 150]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from a3c.cpu import machine
from apps.curves import read_progress
from bench.drivers import ROOT

WARMUP_SECONDS = 30.0  # start-up (imports, connecting, the first rollouts) is not the steady state


def run(seconds: float, evaluator: bool, actors: int, workdir: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="evaluator-cost-", dir=workdir))
    argv = [sys.executable, "-m", "apps", "train", "--env", "PongNoFrameskip-v4", "--actors", str(actors),
            "--max-seconds", str(seconds), "--run-dir", str(run_dir), "--log-interval", "5"]
    result = subprocess.run(argv + (["--evaluator"] if evaluator else []), cwd=ROOT, capture_output=True,
                            text=True, timeout=seconds + 300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_progress(run_dir) if r["seconds"] >= WARMUP_SECONDS]
    first, last = records[0], records[-1]
    found = {"evaluator": evaluator,
             "frames_per_second": (last["frames"] - first["frames"]) / (last["seconds"] - first["seconds"])}
    if evaluator:
        stopped = re.search(r"stopped after (\d+) rounds \(([\d.]+) s of CPU\)", result.stderr)
        found |= {"rounds": int(stopped.group(1)), "evaluator_cpu_seconds": float(stopped.group(2)),
                  "evaluator_cpu_share": float(stopped.group(2)) / last["seconds"]}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each kind, alternated")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(args.seconds, evaluator, args.actors, Path(tmp)) for _ in range(args.runs)
                for evaluator in (False, True)]
    without = statistics.median(r["frames_per_second"] for r in runs if not r["evaluator"])
    with_it = statistics.median(r["frames_per_second"] for r in runs if r["evaluator"])
    print(json.dumps({"machine": machine(), "actors": args.actors, "seconds": args.seconds, "runs": runs,
                      "median_without": without, "median_with": with_it, "ratio": with_it / without}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
