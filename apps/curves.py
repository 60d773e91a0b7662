"""`a3c plot`: learning curves from runs' progress.jsonl files, several runs in one figure."""

from __future__ import annotations

import json
from pathlib import Path

from a3c.errors import UserFacingError


def read_progress(run_dir: str | Path) -> list[dict]:
    """The progress records of a run directory (or of a progress.jsonl file), skipping a torn last line."""
    path = Path(run_dir)
    path = path / "progress.jsonl" if path.is_dir() else path
    if not path.exists():
        raise UserFacingError(f"no progress.jsonl in {run_dir}")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def evaluation_rounds(records: list[dict]) -> list[dict]:
    """The first record that shows each evaluation round (records repeat the last round until the next)."""
    rounds, seen = [], None
    for record in records:
        key = (record.get("eval_version"), record.get("eval_mean_return"))
        if record.get("eval_mean_return") is not None and key != seen:
            rounds.append(record)
            seen = key
    return rounds


def plot_runs(run_dirs: list[str], output_dir: str | Path) -> list[Path]:
    """Write return_vs_frames.png and return_vs_time.png with one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records_of = {Path(r).name or str(r): read_progress(r) for r in run_dirs}
    runs = {run: [x for x in records if x.get("mean_return") is not None] for run, records in records_of.items()}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, x_key, scale, label in (("return_vs_frames.png", "frames", 1e6, "emulator frames (millions)"),
                                      ("return_vs_time.png", "seconds", 60.0, "wall-clock time (minutes)")):
        figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
        for run, records in runs.items():
            (line,) = axes.plot([r[x_key] / scale for r in records], [r["mean_return"] for r in records], label=run)
            rounds = evaluation_rounds(records_of[run])
            if rounds:  # the evaluator's greedy rounds, dashed in the run's colour
                axes.plot([r[x_key] / scale for r in rounds], [r["eval_mean_return"] for r in rounds], "--",
                          color=line.get_color(), label=f"{run}, evaluation (greedy)")
        axes.set_xlabel(label)
        axes.set_ylabel("mean return: last 100 episodes; evaluation rounds")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize="small")
        figure.tight_layout()
        figure.savefig(output_dir / name)
        plt.close(figure)
        written.append(output_dir / name)
    return written
